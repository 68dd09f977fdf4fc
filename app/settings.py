"""Every setting once (name, default, help): the SETTINGS table, read at start-up from SIGHTLINE_<NAME> and CLI flags
into one frozen `Settings`, and the README's settings table generated from it (`python -m app.settings`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from engine.defaults import DEFAULT_AGENT_STEPS, DEFAULT_CACHE_BYTES, DISK_DEFAULT_MAX, DISK_DEFAULT_SHARE, GIB
from indexer.defaults import DEFAULT_OCR_INTERVAL, DEFAULT_SAMPLE_FPS, DEFAULT_TEXT_MODEL, DEFAULT_WHISPER_MODEL


class Setting(NamedTuple):
    name: str
    default: object  # its type is the setting's type; None (library) is computed at start-up
    help: str
    shown: str = ""  # the default as the README shows it, where the value itself says little ("" shows the value)


def _default_library() -> str:
    from platformdirs import user_data_dir

    return str(Path(user_data_dir("sightline", appauthor=False)) / "library")


# Defaults are the offline profile: everything runs on a CPU with models shipped in wheels. Those the engine and the
# indexer use too come from their defaults.py, so a function called without settings agrees with the settings.
SETTINGS: tuple[Setting, ...] = (
    Setting("library", None, "Library folder (database, vectors, thumbnails, caches).", "a per-user data folder"),
    Setting("database_url", "", "SQLAlchemy URL of the database; empty means library.db inside the library folder.",
            "(library.db)"),
    Setting("whisper_model", DEFAULT_WHISPER_MODEL,
            "faster-whisper model: 'tiny.en' (shipped offline), any model name or a local path."),
    Setting("whisper_language", "", "Spoken language code ('en', 'de', ...); empty means detect it.", "(detect)"),
    Setting("text_model", DEFAULT_TEXT_MODEL,
            "Sentence-transformers text embedder: name (shipped offline) or local path."),
    Setting("visual_model", "",
            "CLIP/SigLIP model id or local path for visual search; empty disables visual embeddings.", "(off)"),
    Setting("ocr_interval", DEFAULT_OCR_INTERVAL,
            "Seconds between on-screen text checks inside a shot (keyframes are always read)."),
    Setting("sample_fps", DEFAULT_SAMPLE_FPS,
            "Frames per second sampled for shots' keyframes, on-screen text and visual embeddings."),
    Setting("captions", False, "Write a VLM caption per segment while indexing (needs a loaded model; slow)."),
    Setting("vlm_model", "auto",
            "Answering model: 'auto' (InternVideo3 on a CUDA GPU, none on CPU), 'none', an id or path."),
    Setting("quantization", "auto", "'auto', 'nf4', 'int8' or 'bf16'. auto picks nf4 when bf16 does not fit the GPU."),
    Setting("cache_bytes", DEFAULT_CACHE_BYTES,
            "Memory budget for per-video latent caches; older ones spill to the library's disk.",
            f"{DEFAULT_CACHE_BYTES / GIB:g} GiB"),
    Setting("cache_disk_bytes", 0, "Disk cap for spilled per-video caches (`cache/prefix-kv`); least recently used "
            "files are deleted, writes run in the background.",
            f"min({DISK_DEFAULT_MAX / GIB:g} GiB, {DISK_DEFAULT_SHARE:.0%} of free disk)"),
    Setting("vlm_revision", "",
            "Hub commit of the answering model to load; empty: the commit pinned in `engine/registry.py`.",
            "(registry's commit)"),
    Setting("agent_steps", DEFAULT_AGENT_STEPS, "Most tool calls the agent makes before it must answer."),
    Setting("host", "127.0.0.1",
            "Address the web UI binds to. Use 0.0.0.0 to serve your network (set an auth too)."),
    Setting("port", 7860, "Port of the web UI."),
    Setting("auth", "", "'user:password' required by the web UI; empty means no login.", "(none)"),
    Setting("max_upload_mb", 2048, "Largest file the web UI accepts, in MB."),
    Setting("media_roots", "", "Folders (`:`-separated) the web UI may add; empty: any folder when it listens on "
            "localhost only, none (uploads only) when it serves a network or a `--share` link.", "(see text)"),
)


@dataclass(frozen=True)
class Settings:
    """The settings of one process, read once by `load_settings` and passed down. No defaults here: SETTINGS has
    them, so a field missing from either is an error at start-up, never a silent fallback."""

    library: str
    database_url: str
    whisper_model: str
    whisper_language: str
    text_model: str
    visual_model: str
    ocr_interval: float
    sample_fps: float
    captions: bool
    vlm_model: str
    quantization: str
    cache_bytes: int
    cache_disk_bytes: int
    vlm_revision: str
    agent_steps: int
    host: str
    port: int
    auth: str
    max_upload_mb: int
    media_roots: str

    @property
    def library_path(self) -> Path:
        return Path(self.library).expanduser()


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(value: str, default: object, name: str = "") -> object:
    """An environment value as the setting's type; a value that is not one is a SightlineError naming it."""
    import math

    from storage.errors import SightlineError

    kind = "true or false" if isinstance(default, bool) else type(default).__name__
    try:
        if isinstance(default, bool):
            word = value.strip().lower()
            if word not in _TRUE + _FALSE:
                raise ValueError(value)
            return word in _TRUE
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            return number
    except ValueError:
        shown = repr(value[:60] + ("…" if len(value) > 60 else ""))
        want = {"true or false": f"one of {', '.join(_TRUE + _FALSE)}", "int": "a whole number",
                "float": "a number"}[kind]
        raise SightlineError(f"SIGHTLINE_{name.upper()}={shown} is not {want}.",
                             hint=f"Set it to {want} (default {default!r}), or unset it.") from None
    return value


def load_settings(environ: dict | None = None, **overrides) -> Settings:
    """Settings from defaults <- SIGHTLINE_* environment <- explicit overrides (CLI flags; None means unset).

    A bad SIGHTLINE_* value raises SightlineError naming it; an override that is no setting raises TypeError."""
    unknown = set(overrides) - {s.name for s in SETTINGS}
    if unknown:
        raise TypeError(f"load_settings() got overrides that are no setting: {', '.join(sorted(unknown))}")
    env = os.environ if environ is None else environ
    values = {}
    for name, default, _help, _shown in SETTINGS:
        value = default
        raw = env.get(f"SIGHTLINE_{name.upper()}")
        if raw not in (None, ""):
            value = _coerce(raw, default, name) if default is not None else raw
        if overrides.get(name) is not None:
            value = overrides[name]
        values[name] = value
    if not values["library"]:
        values["library"] = _default_library()
    return Settings(**values)


def help_of(name: str, with_default: bool = False) -> str:
    """A setting's help text (a CLI flag's help), with its default appended when asked."""
    setting = next(s for s in SETTINGS if s.name == name)
    return f"{setting.help} Default: {_shown_default(setting).strip('`')}." if with_default else setting.help


# --- the README's settings table ------------------------------------------------------------------------------

_MARKER_START = "<!-- settings-table"  # how the block's first line starts, whatever the rest says
TABLE_MARKER = (f"{_MARKER_START}: generated by `python -m app.settings --write README.md`; "
                "tests/test_docs.py checks it -->")


def _shown_default(setting: Setting) -> str:
    """The default as the README shows it: its `shown` words, else the value as code (`false`, `7860`)."""
    if setting.shown:
        return setting.shown
    value = str(setting.default).lower() if isinstance(setting.default, bool) else setting.default
    return f"`{value}`"


def settings_table() -> str:
    """The README's settings block: the marker line, then one Markdown table row per setting, in SETTINGS order."""
    lines = [TABLE_MARKER, "| variable | default | what it does |", "| --- | --- | --- |"]
    for s in SETTINGS:
        cells = (f"`SIGHTLINE_{s.name.upper()}`", _shown_default(s), s.help)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def table_in(readme: str) -> str:
    """The settings block of a README's text: the marker line and the table rows under it ("" when absent)."""
    lines = readme.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(_MARKER_START)), None)
    if start is None:
        return ""
    end = start + 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "".join(lines[start:end])


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m app.settings", description=settings_table.__doc__)
    parser.add_argument("--write", metavar="README", help="replace the settings block of this file in place")
    args = parser.parse_args(argv)
    if not args.write:
        print(settings_table(), end="")
        return
    path = Path(args.write)
    text = path.read_text(encoding="utf-8")
    old = table_in(text)
    if not old:
        raise SystemExit(f"{path} has no line starting with {_MARKER_START!r}")
    path.write_text(text.replace(old, settings_table(), 1), encoding="utf-8")


if __name__ == "__main__":
    _main()
