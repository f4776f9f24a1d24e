"""Tiny randomly initialised models of every supported family, from explicit configs.

Shared by the tests; nothing is downloaded. ``build_tiny(case)`` gives a seeded float32 model
in eval mode whose parameters are perturbed away from their init, so that norms, biases and
softcaps all matter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers as tf
from torch import nn

VOCAB = 300
D_MODEL = 64
N_LAYERS = 3
BATCH, SEQ = 2, 7
OPTION_IDS = torch.tensor([5, 17, 123, 299])  # (n_options,)

# Special tokens inside the tiny vocabulary; the defaults (e.g. GPT-2's 50256) make
# transformers log a warning for every model built.
TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)

# Shared by the rotary, grouped-query families.
GQA = dict(
    **TOKENS,
    vocab_size=VOCAB,
    hidden_size=D_MODEL,
    intermediate_size=128,
    num_hidden_layers=N_LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def _with_head_bias(model: nn.Module) -> None:
    """Give the lm_head a bias (no supported family ships one) so the bias path is tested."""
    old = model.lm_head
    new = nn.Linear(old.in_features, old.out_features, bias=True)
    new.weight = old.weight  # keeps any tying with the embedding
    model.lm_head = new


# id -> (config factory, causal-LM class, post-construction tweak or None).
CASES: dict[str, tuple[Callable[[], tf.PretrainedConfig], type, Callable | None]] = {
    "llama": (lambda: tf.LlamaConfig(**GQA), tf.LlamaForCausalLM, None),
    "llama-tied": (
        lambda: tf.LlamaConfig(**GQA, tie_word_embeddings=True),
        tf.LlamaForCausalLM,
        None,
    ),
    "llama-head-bias": (lambda: tf.LlamaConfig(**GQA), tf.LlamaForCausalLM, _with_head_bias),
    "mistral": (lambda: tf.MistralConfig(**GQA, sliding_window=4), tf.MistralForCausalLM, None),
    "qwen2": (lambda: tf.Qwen2Config(**GQA, tie_word_embeddings=True), tf.Qwen2ForCausalLM, None),
    "qwen3": (lambda: tf.Qwen3Config(**GQA, head_dim=16), tf.Qwen3ForCausalLM, None),
    "gemma": (lambda: tf.GemmaConfig(**GQA, head_dim=16), tf.GemmaForCausalLM, None),
    "gemma2": (
        lambda: tf.Gemma2Config(**GQA, head_dim=16, final_logit_softcapping=2.0, sliding_window=4),
        tf.Gemma2ForCausalLM,
        None,
    ),
    "gemma3": (
        lambda: tf.Gemma3TextConfig(
            **GQA,
            head_dim=16,
            final_logit_softcapping=2.0,
            sliding_window=4,
            tie_word_embeddings=False,
        ),
        tf.Gemma3ForCausalLM,
        None,
    ),
    "phi3": (lambda: tf.Phi3Config(**GQA), tf.Phi3ForCausalLM, None),
    "olmo": (lambda: tf.OlmoConfig(**GQA), tf.OlmoForCausalLM, None),
    "olmo2": (lambda: tf.Olmo2Config(**GQA), tf.Olmo2ForCausalLM, None),
    "gpt2": (
        lambda: tf.GPT2Config(
            **TOKENS, vocab_size=VOCAB, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4
        ),
        tf.GPT2LMHeadModel,
        None,
    ),
    "gpt_neox": (
        lambda: tf.GPTNeoXConfig(
            **TOKENS,
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            intermediate_size=128,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
        ),
        tf.GPTNeoXForCausalLM,
        None,
    ),
    "opt": (
        lambda: tf.OPTConfig(
            **TOKENS,
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            ffn_dim=128,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            word_embed_proj_dim=D_MODEL,
        ),
        tf.OPTForCausalLM,
        None,
    ),
    "opt-project-out": (
        lambda: tf.OPTConfig(
            **TOKENS,
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            ffn_dim=128,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            word_embed_proj_dim=32,
        ),
        tf.OPTForCausalLM,
        None,
    ),
    "opt-post-ln": (
        lambda: tf.OPTConfig(
            **TOKENS,
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            ffn_dim=128,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            word_embed_proj_dim=D_MODEL,
            do_layer_norm_before=False,
        ),
        tf.OPTForCausalLM,
        None,
    ),
    "falcon-new": (
        lambda: tf.FalconConfig(
            **TOKENS,
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_kv_heads=2,
            new_decoder_architecture=True,
        ),
        tf.FalconForCausalLM,
        None,
    ),
    "falcon-old-alibi": (
        lambda: tf.FalconConfig(
            **TOKENS,
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            new_decoder_architecture=False,
            multi_query=True,
            parallel_attn=False,
            alibi=True,
            bias=True,
        ),
        tf.FalconForCausalLM,
        None,
    ),
}


def build_tiny(case: str) -> tf.PreTrainedModel:
    """A seeded float32 model in eval mode, every parameter perturbed away from its init.

    Perturbing makes norm weights differ from 1, biases from 0 and logits large enough
    (std ~1) that a softcap of 2.0 changes them, so a missing step cannot pass by accident.
    """
    make_config, cls, tweak = CASES[case]
    torch.manual_seed(0)
    model = cls(make_config())
    if tweak is not None:
        tweak(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.float().eval()
