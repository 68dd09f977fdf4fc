"""Export a sentence-transformers text model to ONNX, once, for the torch-free query path (indexer/models/text_onnx.py).

Run as a subprocess, so the process that searches never imports torch:

    python -m indexer.models.text_onnx_export SOURCE DEST

It loads SOURCE with sentence-transformers, checks that the pipeline is an encoder followed by mean pooling (and
optionally Normalize), the pipelines whose query side text_onnx.py reproduces, and writes into DEST:
`model.onnx` + `model.data` (token ids in, the mean-pooled embedding out: masked sum over tokens / token count,
as sentence-transformers' Pooling; graph fusions already applied, weights beside the graph), `tokenizer.json` (the model's fast tokenizer) and `sightline-onnx.json` (max
sequence length, input names, dimension, pad id). Before it finishes it embeds a few texts both ways and refuses an export
whose vectors differ. Exit 0: done. Exit 3: the pipeline cannot be exported; the reason is the last stdout line.
Any other exit is a failure (its stderr says why).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from indexer.models.text_onnx import ENCODERS, FORMAT, META, UNSUPPORTED, open_export

_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_CHECK_TEXTS = ["a man talks about the harbour", "THANKS FOR WATCHING", "Zürich 2024: 3.5 km — ok?", "x " * 400]


class Unsupported(Exception):
    """The model loads, but its pipeline is not encoder + mean pooling (+ Normalize)."""


def pipeline_reason(model) -> str:
    """Why this SentenceTransformer's pipeline cannot go through ONNX, or "" when it can."""
    names = [type(m).__name__ for m in model]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return f"its pipeline is {' -> '.join(names)}, not Transformer -> Pooling (mean) [-> Normalize]"
    pooling = model[1].get_config_dict()
    mode = pooling.get("pooling_mode") or ("mean" if pooling.get("pooling_mode_mean_tokens") else "other")
    if mode != "mean" or pooling.get("include_prompt") is False:
        return f"its pooling is '{mode}', not mean pooling"
    kind = getattr(model[0].auto_model.config, "model_type", "?")
    if kind not in ENCODERS:
        return f"its encoder is a '{kind}' model, not a BERT-like encoder ({', '.join(sorted(ENCODERS))})"
    if model[0].tokenizer is None or not getattr(model[0].tokenizer, "is_fast", False):
        return "it has no fast (Rust) tokenizer"
    return ""


def export(source: str, dest: Path) -> None:
    """Write model.onnx, tokenizer.json and sightline-onnx.json for SOURCE into dest (raises Unsupported)."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    # Eager attention traces to plain ONNX ops; the SDPA path would do the same arithmetic.
    model = SentenceTransformer(source, device="cpu", local_files_only=True,
                                model_kwargs={"attn_implementation": "eager"})
    model.eval()
    reason = pipeline_reason(model)
    if reason:
        raise Unsupported(reason)
    encoder, tokenizer = model[0].auto_model.float().eval(), model[0].tokenizer
    names = [n for n in _TOKEN_INPUTS if n in tokenizer.model_input_names]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise Unsupported(f"its tokenizer gives {tokenizer.model_input_names}, not input_ids and attention_mask")

    class MeanPooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)

    dest.mkdir(parents=True, exist_ok=True)
    sample = tokenizer(["a short text", "another text"], padding=True, return_tensors="pt")
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    traced = dest / "traced.onnx"
    with torch.inference_mode():
        torch.onnx.export(MeanPooled(), tuple(sample[n] for n in names), str(traced), dynamo=False,
                          input_names=names, output_names=["sentence_embedding"],
                          dynamic_axes={**axes, "sentence_embedding": {0: "batch"}}, opset_version=17,
                          do_constant_folding=True)
    _optimise(traced, dest / "model.onnx")
    traced.unlink()
    tokenizer.backend_tokenizer.save(str(dest / "tokenizer.json"))
    dim = int(model.encode(["x"], convert_to_numpy=True).shape[1])
    meta = {"format": FORMAT, "source": source, "max_seq_length": int(model.max_seq_length), "inputs": names,
            "dim": dim, "lower_case": bool(getattr(model[0], "do_lower_case", False)),
            "pad_id": int(tokenizer.pad_token_id or 0)}
    (dest / META).write_text(json.dumps(meta, indent=2))

    ours = open_export(dest, "check")(_CHECK_TEXTS)
    theirs = model.encode(_CHECK_TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    worst = float(np.min(np.sum(ours * theirs, axis=1)))
    if worst < 0.9999:
        raise RuntimeError(f"the exported model's vectors differ from sentence-transformers' (cosine {worst:.5f})")


def _optimise(source: Path, target: Path) -> None:
    """ONNX Runtime's portable graph fusions (attention, GELU, layer norm) applied once and saved, with the
    weights in a file beside the graph (model.data): a search process then opens it in ~0.3 s with no
    optimisation pass, against ~0.7 s for the plain export."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # not ALL: that one is
    options.optimized_model_filepath = str(target)  # tied to this CPU's instruction set
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m indexer.models.text_onnx_export SOURCE DEST", file=sys.stderr)
        return 2
    try:
        export(argv[0], Path(argv[1]))
    except Unsupported as why:
        print(str(why))
        return UNSUPPORTED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
