"""Text and visual embedders: the real packaged MiniLM, a tiny random SigLIP through the real loading path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from storage.errors import SightlineError


@pytest.fixture(scope="session")
def minilm():
    from indexer.models.embedders import load_text_embedder

    return load_text_embedder("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory):
    from indexer.models.embedders import load_visual_embedder
    from tests.tiny_siglip import build_tiny_siglip

    path = build_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))
    return load_visual_embedder(path)


def test_importing_the_model_modules_loads_no_heavy_library():
    code = (
        "import sys, indexer.models.embedders, indexer.models.speech, indexer.models.ocr;"
        "print([m for m in ('torch', 'transformers', 'faster_whisper', 'rapidocr', 'cv2', 'sentence_transformers')"
        " if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


@pytest.mark.slow
def test_minilm_shape_dtype_and_unit_rows(minilm):
    vectors = minilm(["a man rides a bicycle", "the market fell today", ""])
    assert minilm.model_name == "all-MiniLM-L6-v2"
    assert minilm.dim == 384
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm([]).shape == (0, 384)


@pytest.mark.slow
def test_one_query_takes_the_short_path_to_the_same_vector(minilm, monkeypatch):
    texts = ["where does the speaker mention the budget?", "a man rides a bicycle"]
    batch = minilm(texts)  # through sentence-transformers' encode
    minilm.model.train()  # as a freshly built module would be: the short path must not run dropout
    calls = []
    monkeypatch.setattr(minilm.model, "encode", lambda *a, **k: calls.append(a))
    for text, expected in zip(texts, batch):
        one = minilm([text])
        assert one.shape == (1, 384) and one.dtype == np.float32
        np.testing.assert_allclose(one[0], expected, atol=1e-5)
    assert calls == [] and not minilm.model.training


@pytest.mark.slow
def test_minilm_related_pair_scores_above_unrelated_pair(minilm):
    a, b, c = minilm(["A man is riding a bicycle down the street.", "Someone cycles along the road.",
                      "The central bank raised interest rates."])
    related, unrelated = float(a @ b), float(a @ c)
    assert related > unrelated + 0.2, f"related {related:.3f} vs unrelated {unrelated:.3f}"


@pytest.mark.slow
def test_minilm_paraphrase_query_ranks_the_right_sentence_first(minilm):
    sentences = [
        "I sleep with a dagger.",
        "Thanks for watching, see you next time.",
        "The earth rotates slowly at night.",
        "If you're good at something, never do it for free.",
        "Traffic is heavy on the street with bikes and a taxi.",
    ]
    queries = {
        "I keep a knife in my bed": 0,
        "goodbye and thank you for viewing": 1,
        "our planet spinning in the dark": 2,
        "don't work without getting paid for your talent": 3,
        "cars and bicycles in the road": 4,
    }
    corpus = minilm(sentences)
    ranked = {q: int(np.argmax(corpus @ v)) for q, v in zip(queries, minilm(list(queries)))}
    assert ranked == queries


@pytest.mark.slow
def test_text_embedder_is_loaded_once_per_process(minilm):
    from indexer.models.embedders import load_text_embedder

    assert load_text_embedder("all-MiniLM-L6-v2") is minilm
    assert load_text_embedder("sentence-transformers/all-MiniLM-L6-v2").dim == 384


def test_text_model_that_is_not_offline_says_how_to_get_it():
    from indexer.models.embedders import load_text_embedder

    with pytest.raises(SightlineError) as err:
        load_text_embedder("sentence-transformers/no-such-model-for-sightline-tests")
    text = err.value.user_text()
    assert "not available offline" in text
    assert "huggingface-cli download sentence-transformers/no-such-model-for-sightline-tests" in text
    assert "SIGHTLINE_TEXT_MODEL" in text


def test_text_model_folder_that_does_not_exist_is_named(tmp_path):
    from indexer.models.embedders import load_text_embedder

    with pytest.raises(SightlineError, match="does not exist") as err:
        load_text_embedder(str(tmp_path / "missing-model"))
    assert "SIGHTLINE_TEXT_MODEL" in err.value.user_text()


@pytest.mark.slow
def test_tiny_siglip_loads_through_the_real_path_and_embeds(tiny_siglip):
    from transformers import SiglipModel

    assert isinstance(tiny_siglip.model, SiglipModel)
    assert tiny_siglip.dim == 32
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8), np.zeros((90, 160, 3), np.uint8),
              np.full((50, 40, 3), 255, np.uint8)]
    img = tiny_siglip.embed_images(images)
    txt = tiny_siglip.embed_texts(["a photo of a cat", "thanks for watching " * 20])  # the second is truncated
    assert img.shape == (3, 32) and txt.shape == (2, 32)
    assert img.dtype == np.float32 and txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    scores = img @ txt.T
    assert np.isfinite(scores).all()
    assert not np.allclose(img[0], img[1]), "different images must not embed identically"
    np.testing.assert_allclose(tiny_siglip.embed_images(images[:1]), img[:1], atol=1e-5)  # batch-independent
    assert tiny_siglip.embed_images([]).shape == (0, 32)


def test_visual_hub_id_offline_says_how_to_get_it():
    from indexer.models.embedders import load_visual_embedder

    with pytest.raises(SightlineError) as err:
        load_visual_embedder("google/siglip-base-patch16-224-not-cached-here")
    text = err.value.user_text()
    assert "not available offline" in text and "huggingface-cli download" in text
    assert "SIGHTLINE_VISUAL_MODEL" in text


@pytest.mark.slow
def test_visual_loader_refuses_a_model_that_is_not_clip_or_siglip():
    from indexer.models.embedders import load_visual_embedder, packaged_minilm_path

    with pytest.raises(SightlineError, match="not CLIP or SigLIP"):
        load_visual_embedder(str(packaged_minilm_path()))


def test_visual_loader_names_a_folder_without_a_model(tmp_path):
    from indexer.models.embedders import load_visual_embedder

    with pytest.raises(SightlineError, match="no usable config"):
        load_visual_embedder(str(tmp_path))
    with pytest.raises(SightlineError, match="does not exist"):
        load_visual_embedder(str(tmp_path / "nope"))
    with pytest.raises(SightlineError, match="No visual model"):
        load_visual_embedder("")


def build_tiny_clip(folder) -> str:
    """A tiny random CLIP (projection 24 != width 32, so the projection path is exercised) with a local tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["a photo of a cat", "a dog on a mat", "thanks for watching"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=16)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=fast)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=fast.eos_token_id,
                         bos_token_id=fast.bos_token_id, pad_token_id=fast.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=24,
    )
    CLIPModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_tiny_clip_loads_through_the_same_path(tmp_path):
    from transformers import CLIPModel

    from indexer.models.embedders import load_visual_embedder

    clip = load_visual_embedder(build_tiny_clip(tmp_path / "tiny-clip"))
    assert isinstance(clip.model, CLIPModel) and clip.dim == 24
    img = clip.embed_images([np.zeros((50, 80, 3), np.uint8), np.full((300, 200, 3), 200, np.uint8)])
    txt = clip.embed_texts(["a cat", "thanks for watching " * 10])
    assert img.shape == (2, 24) and txt.shape == (2, 24) and img.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.vstack([img, txt]), axis=1), 1.0, atol=1e-5)
    assert np.isfinite(img @ txt.T).all()
