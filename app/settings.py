"""Every setting once: (name, default, help). Read at start-up from SIGHTLINE_<NAME> and CLI flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path


def _default_library() -> str:
    from platformdirs import user_data_dir

    return str(Path(user_data_dir("sightline", appauthor=False)) / "library")


# (name, default, help). Defaults are the offline profile: everything runs on a CPU with models shipped in wheels.
SETTINGS: tuple[tuple[str, object, str], ...] = (
    ("library", None, "Library folder (database, vectors, thumbnails, caches). Default: a per-user data folder."),
    ("database_url", "", "SQLAlchemy URL of the database; empty means library.db inside the library folder."),
    ("whisper_model", "tiny.en", "faster-whisper model: 'tiny.en' (shipped offline), any model name or a local path."),
    ("whisper_language", "", "Spoken language code ('en', 'de', ...); empty means detect it."),
    ("text_model", "all-MiniLM-L6-v2", "Sentence-transformers text embedder: name (shipped offline) or local path."),
    ("visual_model", "", "CLIP/SigLIP model id or local path for visual search; empty disables visual embeddings."),
    ("ocr_interval", 2.0, "Seconds between on-screen text checks inside a shot (keyframes are always read)."),
    ("sample_fps", 1.0, "Frames per second sampled for shots' keyframes, on-screen text and visual embeddings."),
    ("captions", False, "Write a VLM caption per segment while indexing (needs a loaded model; slow)."),
    ("vlm_model", "auto", "Answering model: 'auto' (InternVideo3 on a CUDA GPU, none on CPU), 'none', an id or path."),
    ("quantization", "auto", "'auto', 'nf4', 'int8' or 'bf16'. auto picks nf4 when bf16 does not fit the GPU."),
    ("cache_bytes", 4 * 2**30, "Memory budget for per-video latent caches; older ones spill to the library's disk."),
    ("cache_disk_bytes", 0, "Disk cap for spilled per-video caches (LRU deleted); 0: min(20 GiB, 10% of free disk)."),
    ("vlm_revision", "", "Hub commit of the answering model to load; empty: the commit pinned in engine/registry.py."),
    ("agent_steps", 8, "Most tool calls the agent makes before it must answer."),
    ("host", "127.0.0.1", "Address the web UI binds to. Use 0.0.0.0 to serve your network (set an auth too)."),
    ("port", 7860, "Port of the web UI."),
    ("auth", "", "'user:password' required by the web UI; empty means no login."),
    ("max_upload_mb", 2048, "Largest file the web UI accepts, in MB."),
    ("media_roots", "", "Folders (':'-separated) the web UI may add; empty: any on localhost, uploads only on a network."),
)


@dataclass(frozen=True)
class Settings:
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
    agent_steps: int
    host: str
    port: int
    auth: str
    max_upload_mb: int
    media_roots: str
    cache_disk_bytes: int = 0
    vlm_revision: str = ""

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
    """Settings from defaults <- SIGHTLINE_* environment <- explicit overrides (CLI flags; None means unset)."""
    env = os.environ if environ is None else environ
    values = {}
    for name, default, _help in SETTINGS:
        value = default
        raw = env.get(f"SIGHTLINE_{name.upper()}")
        if raw not in (None, ""):
            value = _coerce(raw, default, name) if default is not None else raw
        if overrides.get(name) is not None:
            value = overrides[name]
        values[name] = value
    if not values["library"]:
        values["library"] = _default_library()
    names = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in names})


def help_of(name: str) -> str:
    return next(h for n, _d, h in SETTINGS if n == name)
