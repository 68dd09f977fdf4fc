"""Settings: one table (app/settings.py SETTINGS) feeds the frozen `Settings`, the engine's defaults agree with it,
and a bad SIGHTLINE_* value is one clear line from a real process, never a traceback."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import SETTINGS, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_settings_fields_are_the_table_in_its_order_and_types_without_defaults_of_their_own():
    fields = dataclasses.fields(Settings)
    assert [f.name for f in fields] == [s.name for s in SETTINGS]
    for f, s in zip(fields, SETTINGS):
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f.name
        assert f.type == (type(s.default).__name__ if s.default is not None else "str"), (f.name, f.type, s.default)
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_settings({}).port = 1  # type: ignore[misc]


def test_an_override_that_is_no_setting_is_an_error():
    with pytest.raises(TypeError, match="cache_byte"):
        load_settings({}, cache_byte=1)  # a misspelt or renamed setting must not fall back to its default


def test_the_engine_and_indexer_defaults_are_the_settings_defaults():
    from engine.agent import Budget, answer
    from engine.chat import VideoChat
    from engine.loading import load_vlm
    from engine.prefix_cache import PrefixCache
    from indexer.context import IndexOptions
    from indexer.models.embedders import load_text_embedder
    from indexer.models.speech import load_transcriber

    default = {s.name: s.default for s in SETTINGS}
    options = IndexOptions()
    assert (options.sample_fps, options.ocr_interval) == (default["sample_fps"], default["ocr_interval"]) == (1.0, 2.0)
    assert inspect.signature(load_text_embedder).parameters["name"].default == default["text_model"]
    assert inspect.signature(load_transcriber).parameters["model"].default == default["whisper_model"]
    params = [inspect.signature(VideoChat).parameters["cache_bytes"],
              inspect.signature(PrefixCache).parameters["byte_budget"],
              inspect.signature(load_vlm).parameters["cache_bytes"]]
    assert [p.default for p in params] == [default["cache_bytes"]] * 3 == [4 * 2**30] * 3
    assert inspect.signature(answer).parameters["max_steps"].default == Budget().max_steps == default["agent_steps"]
    assert default["agent_steps"] == 8


@pytest.mark.parametrize("name, value, words", [
    ("SIGHTLINE_PORT", "abc", "SIGHTLINE_PORT='abc' is not a whole number"),
    ("SIGHTLINE_SAMPLE_FPS", "fast", "SIGHTLINE_SAMPLE_FPS='fast' is not a number"),
    ("SIGHTLINE_CAPTIONS", "maybe", "SIGHTLINE_CAPTIONS='maybe' is not one of 1, true, yes, on, 0, false, no, off"),
])
def test_a_bad_value_is_one_line_from_every_entry_point(tmp_path, name, value, words):
    env = {**os.environ, "SIGHTLINE_LIBRARY": str(tmp_path / "lib"), name: value}
    runs = [[sys.executable, "-m", "app", *command] for command in (["serve"], ["status"], ["search", "harbour"])]
    runs.append([sys.executable, str(ROOT / "app.py")])  # the Space's entry point
    for args in runs:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode != 0, (args, done.stdout, done.stderr)
        assert done.stdout == "" and "Traceback" not in done.stderr, (args, done.stderr)
        assert done.stderr.strip().splitlines() == [done.stderr.strip()], (args, done.stderr)  # one line
        assert done.stderr.startswith("Error: ") and words in done.stderr, (args, done.stderr)
