"""The torch-free query embedder (indexer/models/text_onnx.py) gives sentence-transformers' vectors.

A few hundred texts built here (words of the model's own vocabulary in varied sentences, punctuation, numbers,
unicode, texts far past the 256-token limit) are embedded both ways; every pair must have cosine >= 0.999. A model
whose pipeline is not encoder + mean pooling falls back to sentence-transformers with the reason logged; a
non-default model folder goes through its own export, announced on one line.
"""

from __future__ import annotations

import json
import logging
import random
import shutil

import numpy as np
import pytest

from indexer.models.embedders import load_query_embedder, load_text_embedder, packaged_minilm_path
from indexer.models.text_onnx import PREPARING, OnnxTextEmbedder, load_onnx
from storage.errors import SightlineError

UNICODE = ["Zürich café naïve façade", "東京タワーの夜景", "Москва, Красная площадь", "مرحبا بالعالم",
           "emoji 🎬🎥 at the end 🙂", "ﬁne ligatures and ½ fractions", "Ελληνικά γράμματα", "tab\tand\nnewline",
           "ÀÉÎÕÜ ÅÆØ ß", "한국어 문장입니다", "  leading and trailing spaces  ", "a", "?", "1234567890"]
PUNCT = [",", ".", "!", "?", ";", ":", " -", " —", "'s", "...", " (", ")", '"', " &", " %", " #", " @"]


def _vocabulary() -> list[str]:
    words = (packaged_minilm_path() / "vocab.txt").read_text().split("\n")
    return [w for w in words if w.isalpha() and w.isascii() and len(w) > 2]


def texts() -> list[str]:
    """About 400 varied texts, the same on every run."""
    rng = random.Random(13)
    words = _vocabulary()
    out: list[str] = []
    for _ in range(300):  # sentences of 1-40 words, some capitalised, punctuation and numbers mixed in
        n = rng.randint(1, 40)
        parts = []
        for _ in range(n):
            w = rng.choice(words)
            roll = rng.random()
            if roll < 0.1:
                w = w.upper()
            elif roll < 0.2:
                w = w.capitalize()
            elif roll < 0.27:
                w = str(rng.randint(0, 10**rng.randint(1, 7)))
            elif roll < 0.3:
                w = f"{rng.uniform(0, 100):.2f}"
            parts.append(w + (rng.choice(PUNCT) if rng.random() < 0.15 else ""))
        out.append(" ".join(parts))
    for i in range(40):  # far past max_seq_length (256 tokens): truncation must match
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(260, 700))))
    for s in UNICODE:
        out += [s, f"{s} {rng.choice(words)} {rng.randint(0, 99)}"]
    out += [f"{u} " * 80 for u in UNICODE[:6]]  # long unicode texts, cut at 256 tokens too
    return out


@pytest.fixture(scope="module")
def both():
    return load_text_embedder("all-MiniLM-L6-v2"), load_query_embedder("all-MiniLM-L6-v2")


def test_query_embedder_is_onnx_and_cached(both):
    _st, onnx = both
    assert isinstance(onnx, OnnxTextEmbedder)
    assert onnx.model_name == "all-MiniLM-L6-v2" and onnx.dim == 384
    assert load_query_embedder("all-MiniLM-L6-v2") is onnx


def test_onnx_vectors_agree_with_sentence_transformers(both):
    st, onnx = both
    batch = texts()
    assert len(batch) >= 350
    theirs, ours = st(batch), onnx(batch)
    assert ours.shape == theirs.shape == (len(batch), 384) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(ours * theirs, axis=1)
    worst = int(np.argmin(cosine))
    assert cosine.min() >= 0.999, f"cosine {cosine[worst]:.5f} for {batch[worst][:80]!r}"
    # One at a time (a search's query) gives the same vectors as in a batch (padding does not leak in).
    for i in (0, 7, 300, len(batch) - 1):
        single = onnx([batch[i]])[0]
        assert float(single @ ours[i]) >= 0.99999 and float(single @ theirs[i]) >= 0.999


def test_search_sees_the_same_tokenizer(both):
    """storage.search skips the vector of a query in a script the model never learned (validate.known_share):
    the ONNX embedder's tokenizer must give the same share as sentence-transformers' for every kind of query."""
    from storage import validate

    st, onnx = both
    theirs, ours = validate.tokenizer_of(st), validate.tokenizer_of(onnx)
    assert ours is not None and ours.unk_token == theirs.unk_token == "[UNK]"
    queries = ["สวัสดีครับ", "where is the harbour?", "Москва", "東京", "a" * 60_000, "x " * 600, "🙂 boats", "42"]
    for q in queries + texts()[::25]:
        assert ours.tokenize(q) == theirs.tokenize(q), q[:80]
        assert validate.known_share(q, ours) == validate.known_share(q, theirs), q[:80]


def test_empty_input_gives_no_rows(both):
    assert both[1]([]).shape == (0, 384)


def _copy_minilm(folder):
    shutil.copytree(packaged_minilm_path(), folder)
    return folder


def test_a_model_without_mean_pooling_falls_back_with_the_reason(tmp_path, caplog):
    folder = _copy_minilm(tmp_path / "cls-model")
    pooling = folder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    pooling.write_text(json.dumps(config))

    assert load_onnx(folder, "cls-model", root=tmp_path / "cache") == (
        None, "its pooling is 'cls_token', not mean pooling")
    assert not (tmp_path / "cache").exists()  # decided from the files: nothing exported
    with caplog.at_level(logging.WARNING, logger="indexer.models.embedders"):
        embedder = load_query_embedder(str(folder))
    assert not isinstance(embedder, OnnxTextEmbedder) and embedder.dim == 384
    assert (f"Text model {folder}: queries use sentence-transformers (slower start): its pooling is 'cls_token', "
            "not mean pooling") in caplog.text


def test_a_failed_export_falls_back_to_sentence_transformers_with_the_reason(tmp_path, caplog, monkeypatch):
    """Search must keep working when the one-time export cannot run (onnx missing, a full or read-only cache)."""
    from indexer.models import text_onnx

    folder = _copy_minilm(tmp_path / "export-fails")

    def failing(*_args, **_kwargs):
        raise SightlineError("Preparing the text model for fast search failed: Module onnx is not installed!",
                             hint="Check that torch, sentence-transformers and onnx are installed.")

    monkeypatch.setattr(text_onnx, "load_onnx", failing)
    with caplog.at_level(logging.WARNING, logger="indexer.models.embedders"):
        embedder = load_query_embedder(str(folder))
    assert not isinstance(embedder, OnnxTextEmbedder) and embedder.dim == 384
    assert embedder(["a sentence"]).shape == (1, 384)
    assert (f"Text model {folder}: queries use sentence-transformers (slower start): Preparing the text model for "
            "fast search failed: Module onnx is not installed!") in caplog.text


def test_a_model_that_is_not_a_bert_like_encoder_falls_back(tmp_path):
    folder = _copy_minilm(tmp_path / "gpt-ish")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    assert load_onnx(folder, "gpt-ish", root=tmp_path / "cache")[1] == (
        "its encoder is a 'gpt2' model, not a BERT-like encoder (bert, camembert, distilbert, electra, mpnet, "
        "roberta, xlm-roberta)")


@pytest.mark.slow
def test_a_configured_model_folder_is_exported_once_with_a_message(tmp_path, capfd, both):
    folder = _copy_minilm(tmp_path / "my-model")
    embedder, reason = load_onnx(folder, "my-model", root=tmp_path / "cache")
    assert reason == "" and isinstance(embedder, OnnxTextEmbedder)
    assert capfd.readouterr().err.strip() == PREPARING
    [export] = (tmp_path / "cache").iterdir()
    assert export.name.startswith("my-model-")
    assert sorted(p.name for p in export.iterdir()) == [
        "model.data", "model.onnx", "sightline-onnx.json", "tokenizer.json"]
    sample = texts()[::20]
    assert np.sum(embedder(sample) * both[0](sample), axis=1).min() >= 0.999

    again, _ = load_onnx(folder, "my-model", root=tmp_path / "cache")  # the export is found: no second message
    assert isinstance(again, OnnxTextEmbedder) and capfd.readouterr().err == ""
