"""Cold start of the `sightline` command line and the web UI: wall time of fresh processes on a small library.

Builds a small library in a temporary folder (two videos, a dozen moments, vectors from the real MiniLM as the
indexer writes them), prepares the ONNX query model once (not timed), runs each command once to warm the disk
cache, then times RUNS fresh processes of each and reports the median (and min/max) wall time, and the median
CPU time of the process (user + system; close to the wall time on idle cores, and steadier on shared ones):

- `python -c pass` (the floor: the interpreter alone), `sightline --help`, `sightline status`,
  `sightline search QUERY`, `sightline ask QUESTION` evidence-only (SIGHTLINE_VLM_MODEL=auto on a machine without
  a GPU driver, else none);
- `serve` ready: from starting `sightline serve` until the first search is answered over HTTP (gradio_client's
  `predict(..., api_name="/search")`, polled until the server answers), median of SERVE_RUNS.

Every command's output is checked (the expected moment is found), so a fast wrong answer does not count.
Prints a table, then one JSON line (only the JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERY = "fishermen before the storm"
QUESTION = "when did the fishermen pull their boats up?"
EXPECT = "the fishermen pulled their boats up the beach before the storm"
TARGETS_S = {"help": 0.5, "status": 0.5, "search": 1.5, "ask": 2.0, "serve_ready": 10.0}
MOMENTS = {
    "/footage/market.mp4": [
        (5.0, 8.0, "speech", "fresh bread and cheese at the morning market"),
        (20.0, 24.0, "speech", "the baker says the ovens start at four"),
        (26.0, 28.0, "text", "OPEN 7 DAYS"),
    ],
    "/footage/harbour.mp4": [
        (3.0, 6.0, "speech", "gulls circle over the fish market on the quay"),
        (12.0, 15.5, "speech", EXPECT),
        (18.0, 21.0, "speech", "the wind picked up and the rain came in from the west"),
        (25.0, 29.0, "speech", "by evening the harbour was empty and quiet"),
        (40.0, 43.0, "text", "HARBOUR MASTER OFFICE"),
        (44.0, 47.0, "text", "NO MOORING"),
        (50.0, 55.0, "speech", "repairs to the nets took the whole next morning"),
    ],
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_library(folder: Path) -> None:
    """Two indexed videos through storage, vectors from the indexer's sentence-transformers MiniLM."""
    from indexer.models.embedders import load_text_embedder
    from storage import Library
    from tests.library_builder import add_video

    embed = load_text_embedder("all-MiniLM-L6-v2")
    lib = Library.open(folder)
    try:
        for path, moments in MOMENTS.items():
            add_video(lib, path, 60.0, moments, embed=embed, model=embed.model_name)
    finally:
        lib.close()


def environment(library: Path) -> dict:
    from engine.loading import gpu_may_exist

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "SIGHTLINE_LIBRARY": str(library), "PYTHONPATH": path,
            "SIGHTLINE_VLM_MODEL": "none" if gpu_may_exist() else "auto", "GRADIO_ANALYTICS_ENABLED": "False"}


def commands() -> dict[str, list[str]]:
    app = [sys.executable, "-m", "app"]
    return {"python -c pass": [sys.executable, "-c", "pass"], "help": [*app, "--help"], "status": [*app, "status"],
            "search": [*app, "search", QUERY], "ask": [*app, "ask", QUESTION]}


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall s, CPU s (user + system), stdout) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far, from /proc (Linux); nan elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check(name: str, out: str) -> None:
    wanted = {"help": "search", "status": "2 indexed", "search": EXPECT, "ask": EXPECT}.get(name)
    if wanted and wanted not in out:
        raise SystemExit(f"`{name}` did not print {wanted!r}:\n{out}")
    if name == "ask" and "Evidence-only" not in out:
        raise SystemExit(f"`ask` was not evidence-only:\n{out}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _search_over_http(url: str) -> str:
    """One search through Gradio's HTTP API with gradio_client, as a script would call it."""
    from gradio_client import Client

    moments = Client(url, verbose=False).predict(QUERY, [], "", 10, api_name="/search")  # the moments, as JSON
    return json.dumps(moments)


def serve_ready(env: dict) -> tuple[float, float]:
    """(wall s, the server's CPU s) from starting `sightline serve` to the first search answered over HTTP."""
    import gradio_client  # noqa: F401 - imported before the clock starts: the server is timed, not the client
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
            if time.perf_counter() - start > 300:
                raise SystemExit("serve did not answer a search within 300 s")
            try:
                stream = _search_over_http(url)
                break
            except (OSError, ValueError, httpx.HTTPError):  # not listening yet, or the app not mounted yet
                time.sleep(0.05)
        wall, cpu = time.perf_counter() - start, _cpu_of(proc.pid)
        if "fishermen" not in stream:
            raise SystemExit(f"the first search over HTTP did not find the moment: {stream[:1000]}")
        return wall, cpu
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (median reported)")
    parser.add_argument("--serve-runs", type=int, default=3, help="`serve` starts timed (0 to skip)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sightline-cold-") as tmp:
        library = Path(tmp) / "lib"
        log("building the library (real MiniLM vectors)...")
        build_library(library)
        env = environment(library)
        log("warming up (the first search prepares the ONNX query model once; not timed)...")
        for name, cmd in commands().items():
            check(name, timed(cmd, env)[2])
        walls: dict[str, list[float]] = {name: [] for name in commands()}
        cpus: dict[str, list[float]] = {name: [] for name in commands()}
        for i in range(args.runs):  # interleaved, so a burst of load on the machine hits every command alike
            for name, cmd in commands().items():
                wall, cpu, out = timed(cmd, env)
                check(name, out)
                walls[name].append(wall)
                cpus[name].append(cpu)
            log(f"run {i + 1}/{args.runs} done")
        if args.serve_runs:
            serves = [serve_ready(env) for _ in range(args.serve_runs)]
            walls["serve_ready"], cpus["serve_ready"] = [w for w, _ in serves], [c for _, c in serves]

    median = {k: round(statistics.median(v), 3) for k, v in walls.items()}
    result = {
        "benchmark": "cold_start",
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg()[0],
        "runs": args.runs,
        "serve_runs": args.serve_runs,
        "median_s": median,
        "min_s": {k: round(min(v), 3) for k, v in walls.items()},
        "max_s": {k: round(max(v), 3) for k, v in walls.items()},
        "over_python_s": {k: round(v - median["python -c pass"], 3) for k, v in median.items() if k != "python -c pass"},
        # CPU seconds of the process (user + system): what the wall time would be on idle cores, near enough,
        # for these mostly single-threaded starts; it moves much less than wall time when others share the cores.
        "median_cpu_s": {k: round(statistics.median(v), 3) for k, v in cpus.items()},
        "targets_s": TARGETS_S,
        "met": {k: median[k] <= t for k, t in TARGETS_S.items() if k in median},
    }
    if not args.json:
        print(f"load average at the end: {result['loadavg_at_end']:.1f} on {result['cpus']} CPUs "
              "(wall figures suffer when others share the cores)")
        print(f"{'command':<16} {'median s':>9} {'min s':>7} {'max s':>7} {'CPU s':>7} {'target s':>9}  met")
        for k in walls:
            target = TARGETS_S.get(k)
            print(f"{k:<16} {median[k]:>9} {result['min_s'][k]:>7} {result['max_s'][k]:>7} "
                  f"{result['median_cpu_s'][k]:>7} {target if target is not None else '':>9}  {result['met'].get(k, '')}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
