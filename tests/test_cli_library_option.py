"""`--library DIR` before or after the command name (DESIGN's CLI contract: every command takes it), with the
same meaning and checks in both places; two different folders in the two places is a usage error naming both.

The library is written through storage (tests/library_builder.py) with the real MiniLM vectors, so search and
ask answer as they do after indexing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import cli
from tests.contracts import assert_moment
from tests.library_builder import minilm_library

pytestmark = pytest.mark.slow  # the real MiniLM loads (a few seconds), and one test starts a real process

ROOT = Path(__file__).resolve().parents[1]
DURATION = 20.0
HARBOUR = [
    (0.0, 3.5, "speech", "Good morning, today we are walking through the old harbour district."),
    (3.5, 7.0, "speech", "The fishermen bring their boats in before the storm arrives."),
    (16.0, 19.0, "text", "THANKS FOR WATCHING"),
]


@pytest.fixture(scope="module")
def library_dir(tmp_path_factory):
    return minilm_library(tmp_path_factory.mktemp("library-option") / "lib",
                          {"/videos/harbour walk.mp4": (DURATION, HARBOUR)})


def _run(args: list[str], env: dict | None = None):
    """`sightline ARGS` in this process, with no SIGHTLINE_LIBRARY unless `env` sets it."""
    env = {"SIGHTLINE_LIBRARY": None, "SIGHTLINE_VLM_MODEL": "none", **(env or {})}
    return CliRunner().invoke(cli, args, env=env)


def _moments(output: str) -> list[dict]:
    moments = [json.loads(line) for line in output.splitlines() if line.strip()]
    for m in moments:
        assert_moment(m, duration=DURATION)
    return moments


def test_every_command_takes_library_after_its_name():
    assert set(cli.commands) >= {"index", "status", "search", "ask", "serve", "repair"}
    for name, command in cli.commands.items():
        options = [p for p in command.params if "--library" in getattr(p, "opts", [])]
        assert len(options) == 1, f"`sightline {name}` has {len(options)} --library options"
        help_text = " ".join(_run([name, "--help"]).output.split())  # words as written, not as wrapped
        assert "--library DIRECTORY" in help_text and "both must name the same folder" in help_text, help_text
    top = " ".join(_run(["--help"]).output.split())
    assert "Also accepted after the command" in top and "both must name the same folder" in top, top


@pytest.mark.parametrize("command", [
    ["search", "storm", "--json"],
    ["ask", "when do the fishermen bring their boats in?", "--json"],
    ["status", "--json"],
])
def test_library_after_the_command_means_what_it_means_before(library_dir, command):
    before = _run(["--library", str(library_dir), *command])
    after = _run([*command, "--library", str(library_dir)])
    middle = _run([command[0], "--library", str(library_dir), *command[1:]])
    assert before.exit_code == 0, before.output
    assert after.exit_code == 0 and after.output == before.output == middle.output, (before.output, after.output)
    if command[0] == "search":
        assert "fishermen" in _moments(after.output)[0]["text"]
    elif command[0] == "ask":
        answer = json.loads(after.output)
        assert answer["mode"] == "evidence-only" and answer["evidence"], answer
        for e in answer["evidence"]:
            assert_moment(e, duration=DURATION, evidence=True)
    else:
        assert json.loads(after.output)["library"] == str(library_dir)


def test_after_the_command_wins_over_the_environment(library_dir, tmp_path):
    other = tmp_path / "other"
    result = _run(["status", "--json", "--library", str(library_dir)], env={"SIGHTLINE_LIBRARY": str(other)})
    assert result.exit_code == 0 and json.loads(result.output)["library"] == str(library_dir), result.output
    assert not other.exists()  # the environment's library was never opened


def test_the_same_folder_in_both_places_is_fine_and_two_folders_are_refused(library_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(library_dir.parent)
    same = _run(["--library", str(library_dir), "status", "--json", "--library", "./lib/"])
    assert same.exit_code == 0 and json.loads(same.output)["library"] == str(library_dir), same.output
    other = tmp_path / "other"
    both = _run(["--library", str(library_dir), "search", "storm", "--library", str(other)])
    assert both.exit_code == 2, both.output
    assert "--library is given twice with different folders" in both.output
    assert repr(str(library_dir)) in both.output and repr(str(other)) in both.output, both.output
    assert "Traceback" not in both.output and not other.exists()


@pytest.mark.parametrize("command", [["index"], ["status"], ["search", "storm"], ["ask", "storm?"], ["serve"],
                                     ["repair"]])
@pytest.mark.parametrize("bad, words", [("/tmp/a\x00b", "NUL character"), ("/tmp/\udcfflib", "not UTF-8"),
                                        ("/tmp/" + "n" * 300, "longer than 255 bytes")])
def test_a_bad_library_path_after_the_command_is_refused_as_before_it(command, bad, words):
    for args in (["--library", bad, *command], [*command, "--library", bad]):
        result = _run(args)
        assert result.exit_code == 2, (args, result.output)
        assert "Invalid value for '--library'" in result.output and words in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_a_real_process_takes_library_after_the_command(library_dir):
    """As a shell runs it: `python -m app search QUERY --library L --json`, no SIGHTLINE_LIBRARY."""
    env = {k: v for k, v in os.environ.items() if k != "SIGHTLINE_LIBRARY"}
    done = subprocess.run([sys.executable, "-m", "app", "search", "storm", "--library", str(library_dir), "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    moments = _moments(done.stdout)
    assert moments and "fishermen" in moments[0]["text"] and moments[0]["video"] == "/videos/harbour walk.mp4"
