"""What the UI shows, as HTML or markdown strings: moments (the seek contract), the library table and the
indexing progress, the relevance timeline, agent steps as chat messages and the Settings tab's status table.

Functions of their arguments (rows from storage/catalog.py, moment dicts, the index worker's last event; the
status table reads the library and what services has loaded); app/handlers.py hands the strings to Gradio.
Every moment is an element with class "moment", `data-start` (seconds) and `data-video` (path):
app/static/seek.js seeks the player on a click.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from storage import catalog as lv
from storage.timefmt import format_time

if TYPE_CHECKING:
    import pandas as pd

    from app.index_worker import IndexWorker
    from app.services import Services
    from engine.agent.context import Step


# --- moments as HTML (class "moment", data-start, data-video: the seek contract) --------------------------------


def _file_url(path: str) -> str:
    return "gradio_api/file=" + quote(str(path))


def moment_html(m: dict) -> str:
    """One clickable moment: thumbnail, H:MM:SS, modality, verified mark (answers only), file and text."""
    start, path = float(m["start"]), str(m["video"])
    thumb = m.get("thumbnail")
    image = (f'<img src="{html.escape(_file_url(thumb))}" alt="frame at {format_time(start)}" loading="lazy">'
             if thumb else '<div class="noimg">no thumbnail</div>')
    mark = ""
    if m.get("verified") is True:
        mark = '<span class="verified" title="the model re-watched this window and confirmed it">✓ verified</span>'
    elif m.get("verified") is False:
        mark = '<span class="unverified" title="not re-checked by a model">unverified</span>'
    text = (m.get("text") or "").strip()
    return (f'<button type="button" class="moment" data-start="{start:.3f}" data-end="{float(m["end"]):.3f}" '
            f'data-video="{html.escape(path)}" data-video-id="{int(m["video_id"])}" '
            f'title="{html.escape(text[:300])}">{image}'
            f'<span class="meta"><span class="time">{format_time(start)}</span>'
            f'<span class="modality">{html.escape(m["modality"])}</span>{mark}</span>'
            f'<span class="file">{html.escape(Path(path).name)}</span>'
            f'<span class="text">{html.escape(text[:160])}</span></button>')


def moment_row_html(m: dict) -> str:
    """A compact clickable line (no thumbnail) for the list of a video's moments beside the player."""
    start = float(m["start"])
    return (f'<button type="button" class="moment row" data-start="{start:.3f}" data-video="{html.escape(m["video"])}" '
            f'data-video-id="{int(m["video_id"])}"><span class="time">{format_time(start)}</span>'
            f'<span class="modality">{html.escape(m["modality"])}</span>'
            f'<span class="text">{html.escape((m.get("text") or "").strip()[:120])}</span></button>')


def now_playing_html(path: Path, moments: list[dict], duration: float | None) -> str:
    """The side panel: the playing file's name and length, then its moments as compact rows."""
    length = f" · {format_time(duration, 0)}" if duration else ""
    head = f"<div class='np-head'>Playing <b>{html.escape(path.name)}</b>{length} · {len(moments)} moments</div>"
    if not moments:
        return head
    return head + "<div class='np-list'>" + "".join(moment_row_html(m) for m in moments) + "</div>"


def moments_html(moments: list[dict], css_class: str, empty: str) -> str:
    """Moments as clickable cards in one box of `css_class` (a filmstrip, evidence chips); `empty` when none."""
    if not moments:
        return f'<div class="empty">{html.escape(empty)}</div>'
    return f'<div class="{css_class}">' + "".join(moment_html(m) for m in moments) + "</div>"



# --- library tab ---------------------------------------------------------------------------------------------------


def _eta_text(eta: float | None) -> str:
    return "estimating the time left…" if eta is None else f"about {format_time(eta, 0)} left."


def progress_html(p: lv.Progress, rows: list[lv.VideoRow], worker: IndexWorker) -> str:
    """The latest job's bar, ETA and the file and stage being worked on.

    Files and media seconds come from the job table; the runner's latest progress event (same job) refines the
    fraction within a file and gives its ETA.
    """
    parts = []
    if p.running or worker.busy:
        fraction, eta, total = p.fraction, p.eta_seconds, p.media_total
        event = worker.event
        if event is not None and event.job_id == p.job_id and p.running:
            fraction = max(fraction, event.fraction)
            eta = event.eta_s
            total = total or event.media_total
        pct = 100 * fraction
        parts.append(f'<div class="progress-bar" data-percent="{pct:.1f}"><div style="width:{pct:.1f}%"></div></div>')
        if p.running:
            length = f", {format_time(total, 0)} of video in all" if total else ""
            parts.append(f"<p><b>Indexing</b>: {p.files_done} of {p.files_total} files done{length} — {pct:.0f}%, "
                         f"{_eta_text(eta)}</p>")
        else:
            parts.append("<p><b>Indexing</b>: preparing (probing files)…</p>")
        if worker.last_event:
            parts.append(f"<p class='note'>{html.escape(worker.last_event[:300])}</p>")
        for r in rows:
            if r.status == lv.INDEXING:
                done = ", ".join(f"{stage} {'✓' if status == 'done' else status}" for stage, status in r.stages)
                parts.append(f"<p class='note'>{html.escape(r.name)}: {html.escape(done or 'starting')}</p>")
        if worker.pending():
            parts.append(f"<p class='note'>{worker.pending()} more request(s) queued.</p>")
    elif p.status in (lv.INTERRUPTED, "aborted"):  # no bar at 100%: it stopped part way
        import time

        pct = 100 * p.fraction
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.ended_at)) if p.ended_at else "?"
        parts.append(f'<div class="progress-bar" data-percent="{pct:.1f}"><div style="width:{pct:.1f}%"></div></div>'
                     f"<p>Last indexing run: <b>{html.escape(p.status)}</b> at {when}, {p.files_done} of "
                     f"{p.files_total} files done. Its unfinished videos resume with the next indexing.</p>")
        for r in rows:
            if r.status == lv.INTERRUPTED:
                parts.append(f"<p class='note'>{html.escape(r.name)}: {html.escape(lv.INTERRUPTED_TEXT)}</p>")
    elif p.status != "idle":
        parts.append('<div class="progress-bar" data-percent="100.0"><div style="width:100%"></div></div>'
                     f"<p>Last indexing run: <b>{html.escape(p.status)}</b>, {p.files_done} of {p.files_total} files "
                     f"in {format_time(p.elapsed, 0)}.</p>")
    if worker.last_message and not worker.busy:
        parts.append(f"<p class='note'>{html.escape(worker.last_message)}</p>")
    return "".join(parts) or "<p class='empty'>No indexing has run yet. Add a folder or upload videos.</p>"


def library_html(rows: list[lv.VideoRow]) -> str:
    """The Library tab's table: every video with its status, length, moments and any error or note."""
    if not rows:
        return "<p class='empty'>The library is empty.</p>"
    out = ["<table class='lib-table'><thead><tr><th>#</th><th>video</th><th>status</th><th>length</th>"
           "<th>moments</th><th>details</th></tr></thead><tbody>"]
    for r in rows:
        name = html.escape(r.name)
        link = (f'<button type="button" class="moment" data-start="0" data-video="{html.escape(r.path)}" '
                f'data-video-id="{r.id}" title="play {name}">{name}</button>') if r.status == lv.INDEXED else name
        details = ""
        if r.error:
            details += f"<div class='err'>{html.escape(r.error)}</div>"
        if r.notes:
            details += f"<div class='note'>{html.escape(r.notes)}</div>"
        length = format_time(r.duration, 0) if r.duration else "—"
        out.append(f"<tr><td>{r.id}</td><td>{link}<div class='note'>{html.escape(str(Path(r.path).parent))}</div></td>"
                   f"<td><span class='badge {html.escape(r.status)}'>{html.escape(r.status)}</span></td>"
                   f"<td>{length}</td><td>{r.moments}</td><td>{details}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def video_choices(rows: list[lv.VideoRow]) -> list[tuple[str, str]]:
    """(label, value) pairs for the video pickers: "3: clip.mp4" -> "3"."""
    return [(f"{r.id}: {r.name}", str(r.id)) for r in rows]


# --- relevance timeline ---------------------------------------------------------------------------------------------


def relevance_series(hits: list[dict], duration: float, bins: int = 120) -> pd.DataFrame:
    """Relevance over time: for each time bin, the best score of the hits that overlap it (0 where none)."""
    import pandas as pd

    duration = max(duration, max((h["end"] for h in hits), default=0.0), 1.0)
    step = duration / bins
    values = [0.0] * (bins + 1)
    for h in hits:
        first, last = int(h["start"] / step), min(bins, int(h["end"] / step))
        for i in range(first, last + 1):
            values[i] = max(values[i], float(h["score"]))
    return pd.DataFrame({"time (s)": [round(i * step, 2) for i in range(bins + 1)], "relevance": values})



# --- settings / status ---------------------------------------------------------------------------------------------


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def model_status(services: Services) -> dict:
    """What the answering model is (or why there is none), from what services has loaded so far."""
    settings = services.settings
    info: dict = {"model": None, "reason": "", "quantization": settings.quantization, "device": None, "cache": {}}
    loaded = services.loaded_vlm()  # (VideoChat | None, reason) once services.vlm() has run
    if loaded is None:
        info["reason"] = (f"not loaded yet (SIGHTLINE_VLM_MODEL={settings.vlm_model!r}); it loads on the first "
                          "question or with the button below. Until then answers are evidence-only.")
        return info
    chat, reason = loaded
    if chat is None:
        info["reason"] = reason or "no model configured"
        return info
    d = chat.describe()
    return {**info, **d, "model": d.get("model") or chat.name, "cache": d.get("cache") or {}}


def _device() -> str:
    import sys

    if "torch" not in sys.modules:
        return "not checked (no model loaded in this process)"
    import torch

    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)}"
    return "CPU (no CUDA GPU visible)"


def status_markdown(services: Services) -> str:
    """The Settings tab's table: the answering model (or why there is none), caches, library and models."""
    library = services.library
    rows = lv.videos(library)
    counts = lv.counts(rows)
    m = model_status(services)
    cache = m.get("cache") or {}
    hits, misses = cache.get("hits", 0), cache.get("misses", 0)
    rate = f"{100 * hits / (hits + misses):.0f}% ({hits} hits, {misses} misses)" if hits + misses else "no lookups yet"
    model_line = m["model"] or "none"
    if not m["model"]:
        model_line += f" — {m['reason']}".replace("|", "/")  # a reason must not break the table
    lines = [
        "| Status | |", "| --- | --- |",
        f"| Answering model | {model_line} |",
        f"| Quantization | {m.get('quantization') or '—'} |",
        f"| Model revision | {m.get('revision') or '—'} |",
        f"| Generation | {m.get('generation') or '—'}"
        f"{(' — latent cache off: ' + str(m['latent_cache_unavailable'])).replace('|', '/') if m.get('latent_cache_unavailable') else ''} |",
        f"| Device | {m.get('device') or _device()} |",
        f"| Latent cache in memory | {_human_bytes(cache['bytes']) if 'bytes' in cache else '—'}"
        f"{' in ' + str(cache['entries']) + ' entries' if 'entries' in cache else ''} |",
        f"| Cache hit rate | {rate} |",
        f"| Cache on disk | {_human_bytes(_folder_bytes(library.cache_dir))} in `{library.cache_dir}` |",
        f"| Prefix cache on disk | {_human_bytes(cache['disk_bytes']) if 'disk_bytes' in cache else '—'}"
        f"{' of ' + _human_bytes(cache['disk_cap']) + ' cap' if cache.get('disk_cap') else ''}"
        f"{', ' + str(cache['disk_entries']) + ' files' if 'disk_entries' in cache else ''}"
        f"{', ' + str(cache['disk_pending']) + ' being written' if cache.get('disk_pending') else ''} |",
        f"| Library | `{library.folder}` |",
        f"| Database | `{library.url}` |",
        f"| Videos | {len(rows)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items())) or 'none'}) |",
        f"| Moments | {sum(r.moments for r in rows)} |",
        f"| Text embedder | {services.settings.text_model} |",
        f"| Visual embedder | {services.settings.visual_model or 'off (set SIGHTLINE_VISUAL_MODEL)'} |",
        f"| Speech model | {services.settings.whisper_model} |",
        f"| Largest upload | {services.settings.max_upload_mb} MB |",
    ]
    return "\n".join(lines)


# --- agent steps as chat messages -------------------------------------------------------------------------------------


def step_message(step: Step) -> dict | None:
    """An agent step -> a chat message titled with its tool ("search: red van"); the answer step -> None."""
    if step.kind == "answer":
        return None  # the answer is the last chat message, written from the result
    title = step.title
    if not title:
        main = step.arguments.get("query") or step.arguments.get("claim")
        tool = step.tool or step.kind
        title = f"{tool}: {main}" if main else tool
    body = step.observation
    reasoning = step.reasoning.strip()
    if reasoning:
        body = f"*{reasoning[:600]}*\n\n{body}"
    return {"role": "assistant", "content": (body.strip() or "…")[:1500], "metadata": {"title": str(title)[:120]}}
