// Gradio 6 runs launch(js=...) as a <script>, so this is an immediately invoked function.
(() => {
  // Clicking any element with class "moment" (search result, evidence chip, library row) seeks the player to
  // its data-start. If the player holds another video, the hidden #seek-button asks the server to load
  // data-video-id first; the seek is applied once the new <video> has its metadata. The server may load the
  // video's browser proxy instead of the file (another name), so the player also remembers which video id it
  // was loaded for, with the source it had then.
  if (window.sightline) return;
  const pending = { video: null, videoId: null, start: 0, oldSrc: null };

  const playerVideo = () => document.querySelector("#player video");
  const srcOf = (v) => { try { return decodeURIComponent(v.currentSrc || v.src || ""); } catch (e) { return ""; } };
  const holds = (v, path, id) => !!v && ((!!path && srcOf(v).endsWith(path)) ||
    (id != null && v.dataset.sightlineVideoId === String(id) && v.dataset.sightlineSrc === srcOf(v)));

  function applySeek() {
    if (pending.video === null) return;
    const v = playerVideo();
    if (!v) return;
    const loaded = holds(v, pending.video, pending.videoId) ||
      (pending.oldSrc !== null && srcOf(v) && srcOf(v) !== pending.oldSrc);
    if (!loaded) return;
    if (v.readyState < 1) return;  // no metadata yet: the next tick tries again
    v.currentTime = pending.start;
    v.dataset.sightlineSeek = String(pending.start);
    v.dataset.sightlineVideoId = String(pending.videoId);
    v.dataset.sightlineSrc = srcOf(v);
    pending.video = null;
    pending.oldSrc = null;
  }

  document.addEventListener("click", (ev) => {
    const m = ev.target.closest && ev.target.closest(".moment");
    if (!m) return;
    ev.preventDefault();
    pending.video = m.dataset.video;
    pending.videoId = m.dataset.videoId || m.dataset.video;
    pending.start = parseFloat(m.dataset.start) || 0;
    pending.oldSrc = null;
    document.querySelectorAll(".moment.active").forEach((el) => el.classList.remove("active"));
    m.classList.add("active");
    const v = playerVideo();
    if (holds(v, pending.video, pending.videoId)) {
      applySeek();
    } else {
      pending.oldSrc = v ? srcOf(v) : "";
      const button = document.querySelector("#seek-button");
      if (button) button.click();
    }
    const player = document.querySelector("#player");
    if (player) player.scrollIntoView({ block: "nearest", behavior: "smooth" });
  });

  setInterval(applySeek, 150);
  window.sightline = {
    // Read by the #seek-button event (js= hook): which video to load and where.
    request: () => JSON.stringify({ video: pending.videoId, start: pending.start }),
    pending,
  };
})();
