"""Load an answering model once, under a lock, and say exactly why when it cannot be loaded.

`load_vlm(model, quantization, ...)` resolves the name (engine/registry.py), checks what can be checked before
touching weights (transformers version, GPU present, GPU memory against an estimate from the parameter count,
config is a video model, weights reachable offline), loads with bitsandbytes when asked, refuses a checkpoint
that leaves weights newly initialized, and returns an `engine.chat.VideoChat`. Every failure a user can meet is
a SightlineError; `load_vlm_or_reason` turns it into (None, reason) so the app falls back to evidence-only mode.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.defaults import DEFAULT_CACHE_BYTES, GIB
from engine.quantization import QUANTIZATIONS, SKIP_MODULES, bnb_config
from engine.registry import CPU_MAX_PARAMS, DEFAULT_GPU_MODEL, ModelSpec, known_names, resolve, with_family
from storage.errors import SightlineError
from storage.once import OnceCache

log = logging.getLogger(__name__)

TRANSFORMERS_MIN, TRANSFORMERS_MAX = "4.57.3", "5"  # InternVideo3's remote code needs >=4.57.3,<5

# Loaded VideoChats by (model, quantization, device, library, revision); a failed load is not kept.
_LOADED: OnceCache = OnceCache()


@dataclass
class LoadPlan:
    """What will be loaded, how, and the memory arithmetic behind the choice."""

    spec: ModelSpec
    quantization: str  # nf4 | int8 | bf16 (on a CPU "bf16" loads float32: CPUs lack fast bf16 matmuls)
    device: str  # cuda | cpu
    params: int
    keep_params: int
    need_bytes: int
    free_bytes: int | None  # GPU memory free at planning time; None on a CPU
    skip_modules: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        d = asdict(self)
        d["spec"] = self.spec.name
        return d


# --- checks that need no weights -------------------------------------------------------------------------------


def check_transformers(version: str | None = None) -> str:
    """Raise unless transformers is >=4.57.3,<5 (InternVideo3's remote code and our cache code need that range)."""
    from packaging.version import Version

    if version is None:
        import transformers

        version = transformers.__version__
    if not (Version(TRANSFORMERS_MIN) <= Version(version) < Version(TRANSFORMERS_MAX)):
        raise SightlineError(
            f"transformers {version} is installed; the answering model needs >={TRANSFORMERS_MIN},<{TRANSFORMERS_MAX}.",
            hint=f'Run: pip install "transformers>={TRANSFORMERS_MIN},<{TRANSFORMERS_MAX}"',
        )
    return version


# Files a GPU driver torch.cuda can use leaves on Linux: NVIDIA (and inside containers), WSL2, ROCm.
_GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def gpu_may_exist() -> bool:
    """False only when no GPU driver is visible at all: then torch.cuda cannot find a GPU either, and asking it
    would cost seconds of importing torch (an evidence-only `sightline ask` on a CPU machine never imports it)."""
    import shutil
    import sys

    if "torch" in sys.modules or sys.platform != "linux":  # already paid for, or no driver files to look at
        return True
    return any(os.path.exists(f) for f in _GPU_DRIVER_FILES) or shutil.which("nvidia-smi") is not None


def cuda_free_bytes() -> int | None:
    """Free memory on GPU 0 in bytes, or None when there is no CUDA GPU."""
    if not gpu_may_exist():
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(0)
    return int(free)


def count_params(config: dict) -> tuple[int, int]:
    """(all parameters, never-quantized parameters) of a Qwen3-VL / InternVideo3 config.json, by arithmetic."""
    t = config.get("text_config") or config.get("llm_config") or config  # registry.family_of_config takes both
    v = config.get("vision_config") or {}
    hid, inter, layers = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    heads = t["num_attention_heads"]
    if "kv_lora_rank" in t:  # M2LA: q, kv_a (latent + shared rope key), kv_b, o
        dn, dr, dv, r = t["qk_nope_head_dim"], t["qk_rope_head_dim"], t["v_head_dim"], t["kv_lora_rank"]
        kv_b = r * heads * (dn + dv)  # stays bf16 in nf4/int8 (SKIP_MODULES): counted with the kept parameters
        attn = hid * heads * (dn + dr) + hid * (r + dr) + kv_b + heads * dv * hid
    else:
        hd = t.get("head_dim") or hid // heads
        kvh = t.get("num_key_value_heads") or heads
        attn = hid * heads * hd * 2 + hid * kvh * hd * 2
    mlp = 3 * hid * inter
    embed = t["vocab_size"] * hid
    tied = config.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
    head = 0 if tied else embed
    vision = 0
    if v:
        vh, vi, depth = v["hidden_size"], v["intermediate_size"], v["depth"]
        patch = v.get("in_channels", 3) * v.get("temporal_patch_size", 2) * v["patch_size"] ** 2
        merge = v.get("spatial_merge_size", 2) ** 2
        merger = (vh * merge) ** 2 + vh * merge * v["out_hidden_size"]
        n_mergers = 1 + len(v.get("deepstack_visual_indexes") or [])
        vision = (
            depth * (4 * vh * vh + 2 * vh * vi)
            + patch * vh
            + v.get("num_position_embeddings", 0) * vh
            + n_mergers * merger
        )
    total = layers * (attn + mlp) + embed + head + vision
    kept = embed + head + vision + (layers * kv_b if "kv_lora_rank" in t else 0)
    return total, kept


# The clip budget one inspect/verify call may show: 32 frames (16 pairs) at up to 512 tokens per pair, plus the
# question and the reply. The memory plan counts its working copy of the KV cache and its prefill activations.
CLIP_TOKENS = 16 * 512 + 1024
CUDA_CONTEXT = int(0.75 * GIB)  # CUDA context, cuBLAS workspaces and the allocator's fragmentation


def _text_shape(params: int) -> tuple[int, int, int]:
    """(layers, hidden, intermediate) of the Qwen3-VL text model of this size (the released configs)."""
    if params >= 6e9:
        return 36, 4096, 12288  # 8B (InternVideo3 too)
    if params >= 3e9:
        return 36, 2560, 9728  # 4B
    if params >= 1e9:
        return 28, 2048, 6144  # 2B
    return 2, 64, 128  # tiny test models


def runtime_bytes(params: int, clip_tokens: int = CLIP_TOKENS) -> int:
    """GPU bytes beyond the weights while answering about one clip (engine/generate.py's path):

    - the working copy of the prefix cache: a cached prefix lives in CPU memory (pinned) and is copied to the GPU
      only for the call that uses it, so the prefix-cache budget (SIGHTLINE cache_bytes) is not on the GPU; one
      copy of clip_tokens at the GQA size (8 KV heads x 128, K and V, bf16; M2LA's latent is half of that) is;
    - the prefill activations of the clip: residual, attention and MLP intermediates of one layer at a time for
      every token (logits only for the last), and as much again for the vision tower's patches;
    - the CUDA context.
    """
    layers, hidden, inter = _text_shape(params)
    working_copy = clip_tokens * layers * 2 * 8 * 128 * 2
    activations = 2 * clip_tokens * (4 * hidden + 3 * inter) * 2
    return working_copy + activations + CUDA_CONTEXT


def bytes_needed(params: int, keep_params: int, quantization: str, clip_tokens: int = CLIP_TOKENS) -> int:
    """GPU bytes for the weights under a quantization, plus the runtime of one clip (`runtime_bytes`)."""
    quantized = max(params - keep_params, 0)
    per_param = {"bf16": 2.0, "int8": 1.0, "nf4": 0.55}[quantization]  # nf4: 4 bits + absmax/double-quant state
    return int(2.0 * keep_params + per_param * quantized) + runtime_bytes(params, clip_tokens)


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def plan_load(spec: ModelSpec, quantization: str, free_bytes: int | None, params: tuple[int, int] | None = None):
    """Choose quantization and device, or raise the SightlineError that says why this model cannot run here."""
    if quantization not in QUANTIZATIONS:
        raise SightlineError(
            f"Unknown quantization {quantization!r}.", hint=f"Use one of: {', '.join(QUANTIZATIONS)}."
        )
    total, keep = params or (spec.params, spec.keep_params)
    device = "cuda" if free_bytes is not None else "cpu"
    skip = SKIP_MODULES.get(spec.family, SKIP_MODULES["qwen3_vl"])
    if device == "cpu":
        if spec.needs_gpu or total > CPU_MAX_PARAMS:
            raise SightlineError(
                f"{spec.name} needs a CUDA GPU and this machine has none (torch.cuda.is_available() is False); "
                f"with {total / 1e9:.1f} B parameters one answer on a CPU would take many minutes.",
                hint=f"Run Sightline on a machine with an NVIDIA GPU (about {_gib(bytes_needed(total, keep, 'nf4'))} "
                "of GPU memory with SIGHTLINE_QUANTIZATION=nf4), pick a smaller model (SIGHTLINE_VLM_MODEL=qwen3-vl-2b "
                "runs on a CPU, slowly), or set SIGHTLINE_VLM_MODEL=none for evidence-only answers.",
            )
        chosen = "bf16" if quantization == "auto" else quantization
        return LoadPlan(spec, chosen, device, total, keep, 0, None, skip)
    if quantization == "auto":
        chosen = "bf16" if bytes_needed(total, keep, "bf16") <= free_bytes else "nf4"
    else:
        chosen = quantization
    need = bytes_needed(total, keep, chosen)
    if need > free_bytes:
        smaller = "Set SIGHTLINE_QUANTIZATION=nf4, " if chosen != "nf4" else ""
        raise SightlineError(
            f"Not enough GPU memory for {spec.name} in {chosen}: it needs about {_gib(need)} "
            f"({total / 1e9:.1f} B parameters, {keep / 1e9:.1f} B kept in bf16, plus {_gib(runtime_bytes(total))} "
            f"for one clip's cache copy and activations) and {_gib(free_bytes)} is free.",
            hint=f"{smaller}close other programs using the GPU, or pick a smaller model (qwen3-vl-4b, qwen3-vl-2b).",
        )
    return LoadPlan(spec, chosen, device, total, keep, need, free_bytes, skip)


# --- config and weights ------------------------------------------------------------------------------------------


def offline_error(name: str, err: Exception | None = None) -> SightlineError:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "") not in ("", "0")
    why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
    detail = f" ({type(err).__name__})" if err is not None else ""
    return SightlineError(
        f"The weights of {name} are not on this machine and cannot be downloaded: {why}{detail}.",
        hint=f"On a machine with internet run `huggingface-cli download {name} --local-dir ./{name.split('/')[-1]}`, "
        f"copy that folder here and pass its path (SIGHTLINE_VLM_MODEL=PATH).",
    )


def read_config(spec: ModelSpec) -> dict:
    """config.json of a local folder or a hub id (from the local cache, or downloaded when online)."""
    import json

    if spec.local:
        return json.loads((Path(spec.name) / "config.json").read_text())
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        path = hf_hub_download(spec.name, "config.json", revision=spec.revision)
    except GatedRepoError:
        raise SightlineError(
            f"{spec.name} is gated on the Hugging Face Hub.",
            hint="Accept its licence on huggingface.co and log in with `huggingface-cli login`.",
        ) from None
    except RepositoryNotFoundError:
        raise SightlineError(
            f"{spec.name} does not exist on the Hugging Face Hub.", hint="Check the spelling of the model id."
        ) from None
    except Exception as err:  # noqa: BLE001 - offline, DNS, proxy, timeouts: all mean "cannot get it now"
        raise offline_error(spec.name, err) from None
    return json.loads(Path(path).read_text())


def auto_map_of(spec: ModelSpec) -> dict | None:
    """The config's auto_map (remote-code class names), read without running any remote code."""
    try:
        return read_config(spec).get("auto_map")
    except SightlineError:
        return None


def model_class_for(spec: ModelSpec):
    """The one table from model family to the transformers Auto class that loads it."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    match spec.family:
        case "qwen3_vl":
            return AutoModelForImageTextToText
        case "internvideo3":
            # InternVideo3's README loads through AutoModelForCausalLM (remote code); follow its auto_map otherwise.
            auto_map = (auto_map_of(spec) or {}).keys()
            if "AutoModelForImageTextToText" in auto_map and "AutoModelForCausalLM" not in auto_map:
                return AutoModelForImageTextToText
            return AutoModelForCausalLM
        case _:
            raise SightlineError(
                f"{spec.name}: no loader for model family {spec.family!r}.",
                hint="Sightline loads Qwen3-VL and InternVideo3 checkpoints: " + ", ".join(known_names()),
            )


def load_weights(plan: LoadPlan, path: str):
    """(model, processor) from a local folder or hub id; newly initialized weights are an error, not a warning."""
    import torch
    from transformers import AutoProcessor

    dtype = torch.bfloat16 if plan.device == "cuda" else torch.float32
    revision = None if plan.spec.local else plan.spec.revision  # a folder is what it is; a hub id: the pinned commit
    kwargs = dict(
        revision=revision,
        dtype=dtype,
        device_map={"": 0} if plan.device == "cuda" else "cpu",
        trust_remote_code=plan.spec.trust_remote_code,
        output_loading_info=True,
        attn_implementation="sdpa",
    )
    qconfig = bnb_config(plan.quantization, plan.device, plan.skip_modules)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    auto = model_class_for(plan.spec)
    try:
        model, info = auto.from_pretrained(path, **kwargs)
        processor = AutoProcessor.from_pretrained(
            path, trust_remote_code=plan.spec.trust_remote_code, revision=revision
        )
    except torch.cuda.OutOfMemoryError:
        raise SightlineError(
            f"Not enough GPU memory for {plan.spec.name} in {plan.quantization}: the GPU ran out while loading "
            f"(estimate {_gib(plan.need_bytes)}, {_gib(plan.free_bytes)} was free).",
            hint="Set SIGHTLINE_QUANTIZATION=nf4, close other programs using the GPU, or pick a smaller model "
            "(SIGHTLINE_VLM_MODEL=qwen3-vl-4b or qwen3-vl-2b).",
        ) from None
    except ImportError as err:
        # bitsandbytes missing, or remote code asking for packages (flash_attn, qwen_vl_utils, ...)
        raise SightlineError(
            f"{plan.spec.name} cannot load: {err}",
            hint="Install the missing package into Sightline's environment (pip install <package>) and retry, or "
            "use quantization=bf16 if bitsandbytes is what is missing.",
        ) from None
    except OSError as err:
        if plan.spec.local:
            raise SightlineError(
                f"{path} is missing files the model needs: {err}",
                hint="Download the model again (huggingface-cli download <id> --local-dir DIR).",
            ) from None
        raise offline_error(plan.spec.name, err) from None
    missing = list(info.get("missing_keys") or [])
    mismatched = [k for k, *_ in info.get("mismatched_keys") or []]
    if missing or mismatched:
        bad = (missing + mismatched)[:5]
        raise SightlineError(
            f"{plan.spec.name}: {len(missing) + len(mismatched)} weights were not in the checkpoint and would be "
            f"newly initialized (random), e.g. {', '.join(bad)}. The model would answer nonsense.",
            hint="The checkpoint does not match this transformers version or is incomplete: download it again and "
            f'check `pip install "transformers>={TRANSFORMERS_MIN},<{TRANSFORMERS_MAX}"`.',
        )
    if getattr(processor, "video_processor", None) is None:
        raise SightlineError(
            f"{plan.spec.name} has no video processor (processor type {type(processor).__name__}).",
            hint="Sightline needs a Qwen3-VL style processor with a video_processor.",
        )
    model.eval()
    return model, processor


# --- revisions ---------------------------------------------------------------------------------------------------


def pin_revision(spec: ModelSpec, override: str | None = None) -> ModelSpec:
    """The spec with the hub commit to load: SIGHTLINE_VLM_REVISION when set, else the registry's pin.

    A hub model whose remote code would run (trust_remote_code) with no pinned commit is refused: a push to its
    repository would silently change the code this machine runs. Local folders keep the revision they recorded.
    """
    from dataclasses import replace

    override = (override or "").strip()
    if spec.local or spec.family == "tiny":
        if override:
            log.warning("SIGHTLINE_VLM_REVISION=%s ignored: %s is a local folder", override, spec.name)
        return spec
    if override:
        return replace(spec, revision=override)
    if spec.revision is None and spec.trust_remote_code:
        raise SightlineError(
            f"{spec.name} runs code from its model repository (trust_remote_code) and Sightline has no pinned commit "
            "for it, so a push to that repository would change the code run on this machine.",
            hint=f"Look up the commit you reviewed (https://huggingface.co/{spec.name}/commits/main) and set "
            "SIGHTLINE_VLM_REVISION=<commit>; or download it once (`huggingface-cli download "
            f"{spec.name} --revision <commit> --local-dir DIR`) and set SIGHTLINE_VLM_MODEL=DIR.",
        )
    return spec


# --- the entry points --------------------------------------------------------------------------------------------


def resolve_setting(model: str, free_bytes: int | None) -> ModelSpec:
    """vlm_model setting -> spec: 'auto' is InternVideo3 on a GPU, nothing on a CPU; 'none' is nothing."""
    name = (model or "auto").strip()
    if name.lower() == "none":
        raise SightlineError(
            "No answering model: vlm_model is 'none'.",
            hint="Answers are the best evidence moments. Set vlm_model (e.g. SIGHTLINE_VLM_MODEL=qwen3-vl-2b) to load one.",
        )
    if name.lower() == "auto":
        if free_bytes is None:
            raise SightlineError(
                "No answering model: there is no CUDA GPU here and vlm_model is 'auto' "
                f"({DEFAULT_GPU_MODEL} needs a GPU).",
                hint="Answers are the best evidence moments. On a GPU machine Sightline loads InternVideo3; on a CPU "
                "you can set SIGHTLINE_VLM_MODEL=qwen3-vl-2b (slow) with its weights downloaded.",
            )
        name = DEFAULT_GPU_MODEL
    return resolve(name)


def load_vlm(
    model: str = "auto",
    quantization: str = "auto",
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    library: str | Path | None = None,
    reuse: bool = True,
    revision: str | None = None,
    **chat_options,
):
    """Load (once per model, quantization and device) and return a VideoChat; raise SightlineError saying why not.

    reuse=False loads a private copy (not shared, not kept): for callers that modify the model, like selfcheck.
    revision (SIGHTLINE_VLM_REVISION) overrides the registry's pinned hub commit (engine/registry.py).
    """
    if (model or "").strip().lower() == "none":
        resolve_setting("none", None)  # raises: nothing to load, and no reason to import torch
    if (model or "auto").strip().lower() == "auto" and not gpu_may_exist():
        resolve_setting("auto", None)  # raises: 'auto' on a machine without a GPU driver, decided without torch
    check_transformers()
    free = cuda_free_bytes()
    spec = resolve_setting(model, free)
    if (revision or "").strip() and not spec.local and spec.family != "tiny":
        spec = pin_revision(spec, revision)  # an unknown hub id's config is read at that commit too
    key = (spec.name, quantization, "cuda" if free is not None else "cpu", str(library), revision or "")

    def load(spec: ModelSpec):
        path = spec.name
        if spec.family == "tiny":
            from engine.tiny import tiny_internvideo3_dir, tiny_model_dir

            build = tiny_internvideo3_dir if spec.name == "tiny-internvideo3" else tiny_model_dir
            path = str(build(Path(library or Path.home() / ".cache" / "sightline")))
            spec = resolve(path)
        counts = None
        if spec.params == 0 or spec.family == "unknown":
            config = read_config(spec)
            if spec.family == "unknown":
                spec = with_family(spec, config)
            counts = count_params(config)
        plan = plan_load(spec, quantization, free, counts)  # no GPU / too little memory is said first
        spec = plan.spec = pin_revision(spec, revision)
        if not spec.local:
            read_config(spec)  # fail fast with the offline message before transformers' own error text
        log.info("loading %s (%s on %s, ~%s)", spec.name, plan.quantization, plan.device, _gib(plan.need_bytes))
        model_obj, processor = load_weights(plan, path)
        from engine.chat import VideoChat

        return VideoChat(model_obj, processor, plan, cache_bytes=cache_bytes, library=library, **chat_options)

    return _LOADED.get(key, lambda: load(spec), keep=reuse)  # reuse=False: a private copy, still one load at a time


def load_vlm_or_reason(*, model: str, quantization: str, cache_bytes: int, cache_disk_bytes: int,
                       library: str | Path | None, revision: str) -> tuple[object | None, str]:
    """(VideoChat, "") or (None, reason): load_vlm with the app's settings (vlm_model, quantization, cache_bytes,
    cache_disk_bytes, library, vlm_revision; an empty revision means the registry's pin).

    Never raises: a model that cannot load must not take the app down, it puts the app in evidence-only mode.
    """
    try:
        chat = load_vlm(model, quantization, cache_bytes, library, revision=revision or None,
                        cache_disk_bytes=int(cache_disk_bytes or 0))
        return chat, ""
    except SightlineError as err:
        return None, err.user_text()
    except Exception as err:  # noqa: BLE001 - the app must stay up; the log has the traceback
        log.exception("loading the answering model failed")
        return None, f"The answering model failed to load ({type(err).__name__}: {err}). See the log for details."


def forget_loaded() -> None:
    """Drop loaded models (tests; switching models in the UI)."""
    _LOADED.clear()
