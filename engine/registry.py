"""Which answering models Sightline knows: names, families, sizes. One table, one lookup that names the choices.

A model name resolves to a `ModelSpec`: a registry id (or one of its short aliases), "tiny" (the offline test
model from engine/tiny.py), or any local folder holding a Qwen3-VL / InternVideo3 checkpoint. Anything else
raises SightlineError listing the known names. The family decides the loader (engine/loading.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from storage.errors import SightlineError

DEFAULT_GPU_MODEL = "yanziang/InternVideo3-8B-Instruct"


@dataclass(frozen=True)
class ModelSpec:
    name: str  # hub id or local folder path
    family: str  # "internvideo3" | "qwen3_vl" | "tiny"
    params: int = 0  # all parameters; 0 = count them from the config at load time
    keep_params: int = 0  # parameters never quantized (vision tower, embeddings, lm_head)
    trust_remote_code: bool = False
    needs_gpu: bool = False  # too slow or too big for a CPU: refused there
    local: bool = False  # name is a folder on this machine
    note: str = ""
    # The hub commit to load (config, weights, processor and remote code). None: not pinned; engine.loading then
    # refuses remote code unless SIGHTLINE_VLM_REVISION names a commit. A local folder's is what it recorded.
    revision: str | None = None


# Pinned commits. The Qwen3-VL hashes are the snapshot folders (models--Qwen--*/snapshots/<commit>) and the
# `revision=` pins that several independent public projects record for these repositories; our machines cannot
# reach the hub, so they were not re-checked against it. InternVideo3's full commit is in no source we could read
# (internvideo3.md names only a README commit, b51432a, abbreviated): it stays None, and since its remote code would
# run unpinned, engine.loading refuses it until the user sets SIGHTLINE_VLM_REVISION to the commit they reviewed.
QWEN3_VL_8B_REVISION = "0c351dd01ed87e9c1b53cbc748cba10e6187ff3b"
QWEN3_VL_4B_REVISION = "ebb281ec70b05090aa6165b016eac8ec08e71b17"
QWEN3_VL_2B_REVISION = "89644892e4d85e24eaac8bacfd4f463576704203"

# Parameter counts: engine.loading.count_params over the released configs' shapes (vocab 151936; 2B/4B tie their
# embeddings); InternVideo3 = Qwen3-VL-8B with M2LA attention (r 896, d 128; internvideo3.md section 1.1).
REGISTRY: tuple[ModelSpec, ...] = (
    ModelSpec(
        DEFAULT_GPU_MODEL,
        "internvideo3",
        params=9_480_000_000,
        keep_params=2_080_000_000,  # ViT+mergers 0.58 B, embed 0.62 B, lm_head 0.62 B, kv_b_proj 0.26 B (dense)
        trust_remote_code=True,
        needs_gpu=True,
        note="InternVideo3-8B (Qwen3-VL-8B with M2LA attention); default on a CUDA GPU",
        revision=None,  # no full commit known: set SIGHTLINE_VLM_REVISION (see above)
    ),
    ModelSpec(
        "Qwen/Qwen3-VL-8B-Instruct",
        "qwen3_vl",
        params=8_770_000_000,
        keep_params=1_820_000_000,
        needs_gpu=True,
        note="Qwen3-VL-8B",
        revision=QWEN3_VL_8B_REVISION,
    ),
    ModelSpec(
        "Qwen/Qwen3-VL-4B-Instruct",
        "qwen3_vl",
        params=4_440_000_000,
        keep_params=804_000_000,  # ViT 0.41 B + tied embeddings 0.39 B
        note="Qwen3-VL-4B; runs on a CPU, slowly",
        revision=QWEN3_VL_4B_REVISION,
    ),
    ModelSpec(
        "Qwen/Qwen3-VL-2B-Instruct",
        "qwen3_vl",
        params=2_130_000_000,
        keep_params=720_000_000,  # ViT 0.41 B + tied embeddings 0.31 B
        note="Qwen3-VL-2B; runs on a CPU, slowly",
        revision=QWEN3_VL_2B_REVISION,
    ),
)

ALIASES: dict[str, str] = {
    "internvideo3": DEFAULT_GPU_MODEL,
    "internvideo3-8b": DEFAULT_GPU_MODEL,
    "internvideo3-8b-instruct": DEFAULT_GPU_MODEL,
    "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct",
    "qwen3-vl-4b": "Qwen/Qwen3-VL-4B-Instruct",
    "qwen3-vl-2b": "Qwen/Qwen3-VL-2B-Instruct",
}

TINY = ModelSpec("tiny", "tiny", note="tiny random Qwen3-VL built offline (tests and selfcheck; says nothing useful)")
TINY_INTERNVIDEO3 = ModelSpec("tiny-internvideo3", "tiny",
                              note="tiny random InternVideo3 (M2LA attention, remote code) built offline, as tiny")
TINY_SPECS = {s.name: s for s in (TINY, TINY_INTERNVIDEO3)}

# A model above this many parameters is refused on a CPU: loading works but one answer takes many minutes.
CPU_MAX_PARAMS = 5_000_000_000


def known_names() -> list[str]:
    return [s.name for s in REGISTRY] + sorted(ALIASES) + list(TINY_SPECS)


def _known_text() -> str:
    lines = [f"  {s.name}: {s.note}" for s in REGISTRY]
    lines.extend(f"  {s.name}: {s.note}" for s in TINY_SPECS.values())
    lines.append(f"  aliases: {', '.join(sorted(ALIASES))}")
    return "\n".join(lines)


def resolve(name: str) -> ModelSpec:
    """The spec for a registry name, alias, 'tiny', a local folder, or a hub id (owner/name) not in the table."""
    raw = (name or "").strip()
    key = ALIASES.get(raw.lower(), raw)
    for spec in REGISTRY:
        if spec.name.lower() == key.lower():
            return spec
    if key.lower() in TINY_SPECS:
        return TINY_SPECS[key.lower()]
    path = Path(raw).expanduser()
    if path.exists():
        return spec_for_folder(path)
    if raw.count("/") == 1 and not raw.startswith((".", "/", "~")) and all(raw.split("/")):
        # A hub id we have no entry for: its config decides the family (engine.loading checks it).
        return ModelSpec(raw, "unknown")
    raise SightlineError(
        f"Unknown model {raw!r}: not a known name, not a folder on this machine, not a Hugging Face id.",
        hint="Known models:\n" + _known_text() + "\nOr pass the path of a downloaded Qwen3-VL/InternVideo3 folder.",
    )


def family_of_config(config: dict) -> str | None:
    """'internvideo3' | 'qwen3_vl' for a config.json we can run as a video model, else None."""
    model_type = str(config.get("model_type", "")).lower()
    archs = " ".join(config.get("architectures") or []).lower()
    auto_map = json.dumps(config.get("auto_map") or {}).lower()
    text = config.get("text_config") or config.get("llm_config") or {}
    has_vision = bool(config.get("vision_config"))
    if not has_vision:
        return None
    if "internvideo3" in model_type or "internvideo3" in archs or "internvideo3" in auto_map or "kv_lora_rank" in text:
        return "internvideo3"
    if model_type == "qwen3_vl" or "qwen3vl" in archs:
        return "qwen3_vl"
    return None


def spec_for_folder(path: Path) -> ModelSpec:
    """A spec for a local checkpoint folder; raises SightlineError when it is not a video model we can run."""
    path = path.resolve()
    cfg_file = path / "config.json"
    if not path.is_dir() or not cfg_file.exists():
        raise SightlineError(
            f"{path} is not a model folder (no config.json there).",
            hint="Point vlm_model at the folder that `huggingface-cli download <model> --local-dir DIR` made.",
        )
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as err:
        raise SightlineError(f"{cfg_file} cannot be read ({err}).", hint="Download the model again.") from None
    family = family_of_config(config)
    if family is None:
        raise not_a_video_model(str(path), config)
    return ModelSpec(
        str(path), family, trust_remote_code=family == "internvideo3", local=True, note=f"local {family} folder",
        revision=local_revision(path),
    )


def local_revision(path: Path) -> str:
    """The commit a downloaded folder records: a hub cache snapshot's folder name, the commit that
    `huggingface-cli download --local-dir` wrote into .cache/huggingface/download/config.json.metadata, else
    "files:<hash>" of its config and code files (what would run and how it is shaped)."""
    import hashlib
    import re

    commit = re.compile(r"^[0-9a-f]{40}$")
    if path.parent.name == "snapshots" and commit.match(path.name):
        return path.name
    meta = path / ".cache" / "huggingface" / "download" / "config.json.metadata"
    try:
        first = meta.read_text().splitlines()[0].strip()
        if commit.match(first):
            return first
    except (OSError, IndexError):
        pass
    h = hashlib.sha256()
    for f in sorted([path / "config.json", *path.glob("*.py")]):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return "files:" + h.hexdigest()[:16]


def not_a_video_model(name: str, config: dict) -> SightlineError:
    kind = config.get("model_type") or "unknown"
    why = "it has no vision_config" if not config.get("vision_config") else f"its model_type is {kind!r}"
    return SightlineError(
        f"{name} is not a video model Sightline can run: {why} (Sightline runs Qwen3-VL and InternVideo3).",
        hint="Known models:\n" + _known_text(),
    )


def with_family(spec: ModelSpec, config: dict) -> ModelSpec:
    """Fill in an 'unknown' hub id's family from its config.json, or raise that it is not a video model."""
    family = family_of_config(config)
    if family is None:
        raise not_a_video_model(spec.name, config)
    return replace(spec, family=family, trust_remote_code=family == "internvideo3")
