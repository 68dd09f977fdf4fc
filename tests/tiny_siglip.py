"""A tiny random SigLIP for tests: the real architecture, a tokenizer trained here, the real image processor,
saved as a folder that `indexer.models.embedders.load_visual_embedder` loads like a downloaded checkpoint."""

from __future__ import annotations

from pathlib import Path

_TOKENIZER_CORPUS = [
    "a photo of a cat",
    "a photo of a dog on a red mat",
    "thanks for watching",
    "a street with bikes and a taxi",
    "the earth at night from space",
    "a man talking in a car",
]


def build_tiny_siglip(folder: str | Path) -> str:
    """Save a tiny random SigLIP (real architecture, tokenizer trained here, real image processor); return its path."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        _TOKENIZER_CORPUS * 10,
        trainers.WordPieceTrainer(vocab_size=200, special_tokens=["<pad>", "<unk>", "</s>"], show_progress=False),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>", model_max_length=16
    )
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)

    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
    )
    torch.manual_seed(0)
    model = SiglipModel(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)
