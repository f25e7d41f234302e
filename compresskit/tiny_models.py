"""Tiny, randomly initialised Hugging Face models of many architectures, built from configs (no download).

For tests of the walker and of decomposition plugins: hidden size 32, FFN size 37 (a prime, so shape
searches meet the "cannot factor" path), 2 layers, vocabulary 99, seeded. Each architecture comes with
the head that exercises the interesting case (tied LM heads for GPT-2 / ALBERT / T5 / BART / Qwen2,
classifiers for the encoders, an image classifier for ViT)::

    model = tiny_model("gpt2")
    outputs = model(**tiny_inputs("gpt2"))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compresskit.errors import ConfigError, did_you_mean

HIDDEN, FFN, LAYERS, VOCAB, HEADS = 32, 37, 2, 99, 4
_DECODER = {"hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS, "vocab_size": VOCAB}
_DECODER |= {"num_attention_heads": HEADS, "num_key_value_heads": 2, "max_position_embeddings": 64}
_BERT_LIKE = {"hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS}
_BERT_LIKE |= {"num_attention_heads": HEADS, "vocab_size": VOCAB, "max_position_embeddings": 64}
_SEQ2SEQ = {"d_model": HIDDEN, "encoder_layers": LAYERS, "decoder_layers": LAYERS, "vocab_size": VOCAB}
_SEQ2SEQ |= {"encoder_attention_heads": HEADS, "decoder_attention_heads": HEADS, "encoder_ffn_dim": FFN}
_SEQ2SEQ |= {"decoder_ffn_dim": FFN, "max_position_embeddings": 64}

#: architecture -> (config class, model class, config keyword arguments), all in ``transformers``.
ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert": ("BertConfig", "BertForSequenceClassification", _BERT_LIKE),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", _BERT_LIKE | {"pad_token_id": 1}),
    "distilbert": (
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        {"dim": HIDDEN, "hidden_dim": FFN, "n_layers": LAYERS, "n_heads": HEADS, "vocab_size": VOCAB},
    ),
    "albert": ("AlbertConfig", "AlbertForMaskedLM", _BERT_LIKE | {"embedding_size": 16}),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", _BERT_LIKE | {"embedding_size": 16}),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        {"n_embd": HIDDEN, "n_inner": FFN, "n_layer": LAYERS, "n_head": HEADS, "vocab_size": VOCAB}
        | {"n_positions": 64, "bos_token_id": 0, "eos_token_id": 0},
    ),
    "t5": (
        "T5Config",
        "T5ForConditionalGeneration",
        {"d_model": HIDDEN, "d_ff": FFN, "d_kv": 8, "num_heads": HEADS, "num_layers": LAYERS}
        | {"vocab_size": VOCAB, "decoder_start_token_id": 0},
    ),
    "bart": ("BartConfig", "BartForConditionalGeneration", _SEQ2SEQ | {"forced_eos_token_id": None}),
    "vit": (
        "ViTConfig",
        "ViTForImageClassification",
        {"hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_labels": 3}
        | {"num_attention_heads": HEADS, "image_size": 8, "patch_size": 4},
    ),
    "llama": ("LlamaConfig", "LlamaForCausalLM", _DECODER),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _DECODER | {"tie_word_embeddings": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", _DECODER | {"sliding_window": None}),
}

ENCODER_DECODER = frozenset({"t5", "bart"})


def tiny_config(arch: str) -> Any:
    """The ``transformers`` config of the tiny ``arch`` model."""
    import transformers

    config_class, _, kwargs = _lookup(arch)
    return getattr(transformers, config_class)(**kwargs)


def tiny_model(arch: str, *, seed: int = 0) -> nn.Module:
    """A seeded, randomly initialised tiny ``arch`` model in eval mode."""
    import transformers

    _, model_class, _ = _lookup(arch)
    torch.manual_seed(seed)
    model: nn.Module = getattr(transformers, model_class)(tiny_config(arch))
    return model.eval()


def tiny_inputs(arch: str, *, batch: int = 2, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Keyword inputs for the tiny ``arch`` model (token ids, or pixels for ViT)."""
    _lookup(arch)
    generator = torch.Generator().manual_seed(seed)
    if arch == "vit":
        return {"pixel_values": torch.randn(batch, 3, 8, 8, generator=generator)}
    ids = torch.randint(2, VOCAB, (batch, length), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if arch in ENCODER_DECODER:
        inputs["decoder_input_ids"] = torch.randint(2, VOCAB, (batch, 5), generator=generator)
    return inputs


def tiny_tokenizer() -> Any:
    """A word-level tokenizer over the tiny vocabulary: ``w2`` ... ``w98``, ``[PAD]`` 0, ``[UNK]`` 1."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1} | {f"w{i}": i for i in range(2, VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def main_output(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The first output tensor (logits) of ``model(**inputs)``, without gradients."""
    with torch.no_grad():
        outputs = model(**inputs)
    first: Callable[[], Any] = getattr(outputs, "to_tuple", lambda: (outputs,))
    return first()[0]


def _lookup(arch: str) -> tuple[str, str, dict[str, Any]]:
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"unknown tiny architecture {arch!r}.{did_you_mean(arch, ARCHITECTURES)} "
            f"Available: {', '.join(ARCHITECTURES)}."
        )
    return ARCHITECTURES[arch]
