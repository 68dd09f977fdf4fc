"""`sightline search`, `status`, `ask` (evidence-only) and `--help` never import torch, transformers or
sentence-transformers: each runs as a real process on a small library (vectors from the indexer's
sentence-transformers model) and prints, at exit, which of those modules it loaded; the answer must be right too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.loading import gpu_may_exist
from tests.library_builder import minilm_library

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "sentence_transformers")
# Runs the CLI as `python -m app` does, then reports the heavy modules loaded, whatever the exit path.
WRAPPER = (
    "import atexit, json, runpy, sys\n"
    f"HEAVY = {HEAVY!r}\n"
    "atexit.register(lambda: print('LOADED ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(HEAVY))),"
    " file=sys.stderr, flush=True))\n"
    "sys.argv = ['sightline'] + sys.argv[1:]\n"
    "runpy.run_module('app', run_name='__main__')\n"
)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return minilm_library(tmp_path_factory.mktemp("cold") / "lib", {  # vectors as the indexer writes them
        "/footage/market.mp4": (30.0, [(5.0, 8.0, "speech", "fresh bread and cheese at the morning market")]),
        "/footage/harbour.mp4": (60.0, [
            (12.0, 15.5, "speech", "the fishermen pulled their boats up the beach before the storm"),
            (40.0, 43.0, "text", "HARBOUR MASTER OFFICE"),
        ]),
    })


def run_cli(lib: Path, *args: str, vlm: str = "auto") -> tuple[str, list[str]]:
    """(stdout, heavy modules the process loaded) of `sightline ARGS` in a fresh process."""
    env = {**os.environ, "SIGHTLINE_LIBRARY": str(lib), "SIGHTLINE_VLM_MODEL": vlm,
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    loaded = [line for line in done.stderr.splitlines() if line.startswith("LOADED ")]
    assert len(loaded) == 1, done.stderr
    return done.stdout, json.loads(loaded[0][len("LOADED "):])


def test_search_finds_the_moment_without_torch(lib):
    out, loaded = run_cli(lib, "search", "fishermen before the storm", "--json")
    hits = [json.loads(line) for line in out.splitlines()]
    assert hits[0]["video"] == "/footage/harbour.mp4" and hits[0]["start"] == 12.0, out
    assert loaded == [], f"search imported {loaded}"


def test_ask_evidence_only_without_torch(lib):
    # On a machine without a GPU driver, 'auto' must decide "no CUDA GPU" without asking torch; where a driver
    # exists the answer would load the real model, so there 'none' gives the evidence-only path.
    vlm = "none" if gpu_may_exist() else "auto"
    out, loaded = run_cli(lib, "ask", "when did the fishermen pull their boats up?", "--json", vlm=vlm)
    result = json.loads(out)
    assert result["mode"] == "evidence-only", out
    assert result["evidence"][0]["video"] == "/footage/harbour.mp4" and result["evidence"][0]["start"] == 12.0
    if vlm == "auto":
        assert "there is no CUDA GPU here and vlm_model is 'auto'" in result["answer"], out
    assert loaded == [], f"ask imported {loaded}"


def test_status_and_help_without_torch(lib):
    out, loaded = run_cli(lib, "status")
    assert "2 indexed, 0 failed, 3 moments" in out and "/footage/harbour.mp4" in out, out
    assert loaded == [], f"status imported {loaded}"
    out, loaded = run_cli(lib, "--help")
    assert all(c in out for c in ("index", "status", "search", "ask", "serve")), out
    assert loaded == [], f"--help imported {loaded}"
