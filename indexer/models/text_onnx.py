"""The text model for queries without torch: ONNX Runtime + `tokenizers`, from the same weights exported once.

A search embeds one short query; loading sentence-transformers for it (torch, transformers, scikit-learn) costs
seconds per process. This module runs the same model as an ONNX graph (indexer/models/text_onnx_export.py writes it,
in a subprocess, the first time a model is used) with the model's own fast tokenizer: token ids -> encoder ->
mean pooling -> L2 normalisation, the vectors sentence-transformers gives (cosine >= 0.999, tests check).

Exports live in a per-user cache folder (`cache_root()`), one per model folder, named by a key of the folder's
path, its files' sizes and modification times and the export format: a changed model is exported again, and
the weights are never hashed on the query path (stat is enough and costs nothing). A model whose pipeline is not
an encoder + mean pooling is recorded there as unsupported, so the next process falls back at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import SightlineError

META = "sightline-onnx.json"  # what the export wrote: max_seq_length, input names, dimension
FORMAT = 1  # bump when what the export writes changes: the cache key includes it, so old exports are left behind
UNSUPPORTED = 3  # the export's exit code for a pipeline this module does not reproduce
# Encoders whose Hugging Face forward takes token ids (+ mask, + token types) and returns last_hidden_state.
ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "camembert"})
PREPARING = "Preparing the text model for fast search (once)..."
_UNSUPPORTED_FILE = "unsupported.txt"
_EXPORT_TIMEOUT_S = 1800


class Pieces:
    """The model's `tokenizers.Tokenizer` with the two things storage.search asks of a Hugging Face tokenizer
    (validate.known_share: is the query in a script the model knows?): `tokenize(text)` and `unk_token`."""

    def __init__(self, backend: Any):
        self.backend = backend  # no truncation or padding set: the embedder cuts and pads per batch itself
        self.unk_token = getattr(backend.model, "unk_token", None)

    def tokenize(self, text: str) -> list[str]:
        return self.backend.encode(text, add_special_tokens=False).tokens


@dataclass
class OnnxTextEmbedder:
    """Callable: list of texts -> (n, dim) float32, rows of unit length (the TextEmbedder interface)."""

    model_name: str
    dim: int
    session: Any = field(repr=False)
    tokenizer: Pieces = field(repr=False)
    max_seq_length: int = 256
    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    lower_case: bool = False
    pad_id: int = 0
    batch_size: int = 64

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = []
        for i in range(0, len(texts), self.batch_size):
            # As sentence-transformers' Transformer module: each text stripped (and lower-cased if configured).
            batch = [str(t).strip() for t in texts[i : i + self.batch_size]]
            rows.append(self.session.run(None, self._features(batch))[0])
        x = np.concatenate(rows).astype(np.float32, copy=False)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def _features(self, batch: list[str]) -> dict[str, np.ndarray]:
        """Token ids cut at max_seq_length (special tokens included) and padded to the longest text of the batch,
        as the Hugging Face tokenizer does for sentence-transformers (truncation "longest_first", padding True)."""
        tok = self.tokenizer.backend
        encodings = tok.encode_batch([t.lower() for t in batch] if self.lower_case else batch,
                                     add_special_tokens=False)
        keep = self.max_seq_length - tok.num_special_tokens_to_add(False)
        for e in encodings:
            e.truncate(keep)
        encodings = [tok.post_process(e) for e in encodings]
        width = max(len(e.ids) for e in encodings)
        arrays = {"input_ids": np.full((len(batch), width), self.pad_id, dtype=np.int64),
                  "attention_mask": np.zeros((len(batch), width), dtype=np.int64),
                  "token_type_ids": np.zeros((len(batch), width), dtype=np.int64)}
        for row, e in enumerate(encodings):
            arrays["input_ids"][row, : len(e.ids)] = e.ids
            arrays["attention_mask"][row, : len(e.ids)] = e.attention_mask
            arrays["token_type_ids"][row, : len(e.ids)] = e.type_ids
        return {n: arrays[n] for n in self.inputs}


def open_export(folder: Path, model_name: str) -> OnnxTextEmbedder:
    """An embedder over an export folder (model.onnx + model.data, tokenizer.json, sightline-onnx.json)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    meta = json.loads((folder / META).read_text())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    pad_id = int(meta.get("pad_id", 0))  # RoBERTa-like encoders derive positions from it: the tokenizer's own
    tokenizer.no_truncation()  # whatever the saved file holds: _features cuts and pads
    tokenizer.no_padding()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # done once by the export
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return OnnxTextEmbedder(model_name=model_name, dim=int(meta["dim"]), session=session,
                            tokenizer=Pieces(tokenizer), max_seq_length=int(meta["max_seq_length"]),
                            inputs=tuple(meta["inputs"]), lower_case=bool(meta.get("lower_case")), pad_id=pad_id)


def folder_reason(folder: Path) -> str:
    """Why a sentence-transformers folder cannot take the ONNX path, read from its files without loading it;
    "" when it looks like an encoder + mean pooling (the export checks again on the loaded model)."""
    modules_file = folder / "modules.json"
    encoder_dir = folder
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return f"its pipeline is {' -> '.join(kinds)}, not Transformer -> Pooling (mean) [-> Normalize]"
        encoder_dir = folder / modules[0].get("path", "")
        pooling_file = folder / modules[1].get("path", "") / "config.json"
        pooling = json.loads(pooling_file.read_text()) if pooling_file.is_file() else {}
        mode = pooling.get("pooling_mode") or ("mean" if pooling.get("pooling_mode_mean_tokens") else "other")
        others = [k for k in ("cls_token", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens",
                              "lasttoken") if pooling.get(f"pooling_mode_{k}")]
        if mode != "mean" or others:
            return f"its pooling is '{', '.join(others) or mode}', not mean pooling"
    config_file = encoder_dir / "config.json"
    if not config_file.is_file():
        return f"it has no config.json in {encoder_dir}"
    kind = json.loads(config_file.read_text()).get("model_type", "?")
    if kind not in ENCODERS:
        return f"its encoder is a '{kind}' model, not a BERT-like encoder ({', '.join(sorted(ENCODERS))})"
    return ""


def cache_root() -> Path:
    """Where exports are kept: the per-user cache folder (XDG_CACHE_HOME moves it on Linux)."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("sightline", appauthor=False)) / "text-onnx"


def export_folder(folder: Path, root: Path | None = None) -> Path:
    """The cache folder for this model folder: its name plus a key of its path, files (size, mtime), format."""
    folder = folder.resolve()
    key = hashlib.sha256(f"{FORMAT}\n{folder}\n".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts):
        st = path.stat()
        key.update(f"{path.relative_to(folder)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name)[:60] or "model"
    return (root or cache_root()) / f"{slug}-{key.hexdigest()[:16]}"


def load_onnx(folder: Path, model_name: str, root: Path | None = None) -> tuple[OnnxTextEmbedder | None, str]:
    """(embedder, "") for a model folder, exporting it first if needed; (None, why) when its pipeline cannot
    be exported. A failed export raises SightlineError."""
    reason = folder_reason(folder)
    if reason:
        return None, reason
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as err:
        return None, f"{err.name} is not installed"
    target = export_folder(folder, root)
    if not (target / META).is_file() and not (target / _UNSUPPORTED_FILE).is_file():
        _export(folder, target)
    if (target / _UNSUPPORTED_FILE).is_file():
        return None, (target / _UNSUPPORTED_FILE).read_text().strip()
    try:
        return open_export(target, model_name), ""
    except Exception as err:  # noqa: BLE001 - a damaged cache entry: say where it is so it can be removed
        raise SightlineError(f"The prepared text model in {target} could not be opened: {err}",
                             hint=f"Delete {target} and run again; it will be prepared anew.") from err


def _export(folder: Path, target: Path) -> None:
    """Run the export in a subprocess (torch is imported there, never here), into a temporary folder that is
    renamed into place, so two processes exporting at once both end with a complete folder."""
    print(PREPARING, file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    project = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (project, os.environ.get("PYTHONPATH")) if p))
    try:
        try:
            done = subprocess.run([sys.executable, "-m", "indexer.models.text_onnx_export", str(folder), str(work)],
                                  capture_output=True, text=True, env=env, timeout=_EXPORT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise SightlineError(f"Preparing the text model {folder} for fast search took over "
                                 f"{_EXPORT_TIMEOUT_S // 60} minutes and was stopped.",
                                 hint="Run the command again; if it keeps happening, report it.") from None
        if done.returncode == UNSUPPORTED:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            (work / _UNSUPPORTED_FILE).write_text((done.stdout.strip().splitlines() or ["not exportable"])[-1])
        elif done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise SightlineError(
                f"Preparing the text model {folder} for fast search failed: {lines[-1] if lines else done.returncode}",
                hint="Check that torch, sentence-transformers and onnx are installed (pip install -r requirements.txt), "
                "then run again.")
        try:
            work.rename(target)
        except OSError:  # another process finished first: its folder is as good as ours
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
