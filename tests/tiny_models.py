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


def _gqa(n_layers: int) -> dict:
    """The shared GQA settings with ``n_layers`` decoder layers."""
    return {**GQA, "num_hidden_layers": n_layers}


def _with_head_bias(model: nn.Module) -> None:
    """Give the lm_head a bias (no supported family ships one) so the bias path is tested."""
    old = model.lm_head
    new = nn.Linear(old.in_features, old.out_features, bias=True)
    new.weight = old.weight  # keeps any tying with the embedding
    model.lm_head = new


# id -> (config factory taking n_layers, causal-LM class, post-construction tweak or None).
# Sliding windows (4) are shorter than the test sequences, so which layers slide matters.
CASES: dict[str, tuple[Callable[[int], tf.PretrainedConfig], type, Callable | None]] = {
    "llama": (lambda n: tf.LlamaConfig(**_gqa(n)), tf.LlamaForCausalLM, None),
    "llama-tied": (
        lambda n: tf.LlamaConfig(**_gqa(n), tie_word_embeddings=True),
        tf.LlamaForCausalLM,
        None,
    ),
    "llama-head-bias": (lambda n: tf.LlamaConfig(**_gqa(n)), tf.LlamaForCausalLM, _with_head_bias),
    "mistral": (
        lambda n: tf.MistralConfig(**_gqa(n), sliding_window=4),
        tf.MistralForCausalLM,
        None,
    ),
    "qwen2": (
        lambda n: tf.Qwen2Config(**_gqa(n), tie_word_embeddings=True),
        tf.Qwen2ForCausalLM,
        None,
    ),
    # layer_types derived from max_window_layers: full below it, sliding from it on.
    "qwen2-sliding": (
        lambda n: tf.Qwen2Config(
            **_gqa(n), use_sliding_window=True, sliding_window=4, max_window_layers=2
        ),
        tf.Qwen2ForCausalLM,
        None,
    ),
    "qwen3": (lambda n: tf.Qwen3Config(**_gqa(n), head_dim=16), tf.Qwen3ForCausalLM, None),
    "gemma": (lambda n: tf.GemmaConfig(**_gqa(n), head_dim=16), tf.GemmaForCausalLM, None),
    "gemma2": (
        lambda n: tf.Gemma2Config(
            **_gqa(n), head_dim=16, final_logit_softcapping=2.0, sliding_window=4
        ),
        tf.Gemma2ForCausalLM,
        None,
    ),
    "gemma3": (
        lambda n: tf.Gemma3TextConfig(
            **_gqa(n),
            head_dim=16,
            final_logit_softcapping=2.0,
            sliding_window=4,
            tie_word_embeddings=False,
        ),
        tf.Gemma3ForCausalLM,
        None,
    ),
    # Gemma-3's legacy int pattern: every 3rd layer full, the others sliding.
    "gemma3-pattern3": (
        lambda n: tf.Gemma3TextConfig(
            **_gqa(n), head_dim=16, sliding_window=4, sliding_window_pattern=3
        ),
        tf.Gemma3ForCausalLM,
        None,
    ),
    "phi3": (lambda n: tf.Phi3Config(**_gqa(n)), tf.Phi3ForCausalLM, None),
    "olmo": (lambda n: tf.OlmoConfig(**_gqa(n)), tf.OlmoForCausalLM, None),
    "olmo2": (lambda n: tf.Olmo2Config(**_gqa(n)), tf.Olmo2ForCausalLM, None),
    "gpt2": (
        lambda n: tf.GPT2Config(**TOKENS, vocab_size=VOCAB, n_embd=D_MODEL, n_layer=n, n_head=4),
        tf.GPT2LMHeadModel,
        None,
    ),
    # Attention scores scaled by 1 / (layer_idx + 1), fixed when the layer is built.
    "gpt2-inverse-layer-scale": (
        lambda n: tf.GPT2Config(
            **TOKENS,
            vocab_size=VOCAB,
            n_embd=D_MODEL,
            n_layer=n,
            n_head=4,
            scale_attn_by_inverse_layer_idx=True,
        ),
        tf.GPT2LMHeadModel,
        None,
    ),
    "gpt_neox": (
        lambda n: tf.GPTNeoXConfig(
            **TOKENS,
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            intermediate_size=128,
            num_hidden_layers=n,
            num_attention_heads=4,
        ),
        tf.GPTNeoXForCausalLM,
        None,
    ),
    "opt": (
        lambda n: tf.OPTConfig(
            **TOKENS,
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            ffn_dim=128,
            num_hidden_layers=n,
            num_attention_heads=4,
            word_embed_proj_dim=D_MODEL,
        ),
        tf.OPTForCausalLM,
        None,
    ),
    "opt-project-out": (
        lambda n: tf.OPTConfig(
            **TOKENS,
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            ffn_dim=128,
            num_hidden_layers=n,
            num_attention_heads=4,
            word_embed_proj_dim=32,
        ),
        tf.OPTForCausalLM,
        None,
    ),
    "opt-post-ln": (
        lambda n: tf.OPTConfig(
            **TOKENS,
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            ffn_dim=128,
            num_hidden_layers=n,
            num_attention_heads=4,
            word_embed_proj_dim=D_MODEL,
            do_layer_norm_before=False,
        ),
        tf.OPTForCausalLM,
        None,
    ),
    "falcon-new": (
        lambda n: tf.FalconConfig(
            **TOKENS,
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            num_hidden_layers=n,
            num_attention_heads=4,
            num_kv_heads=2,
            new_decoder_architecture=True,
        ),
        tf.FalconForCausalLM,
        None,
    ),
    "falcon-old-alibi": (
        lambda n: tf.FalconConfig(
            **TOKENS,
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            num_hidden_layers=n,
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


def build_tiny(case: str, n_layers: int = N_LAYERS) -> tf.PreTrainedModel:
    """A seeded float32 model in eval mode, every parameter perturbed away from its init.

    Perturbing makes norm weights differ from 1, biases from 0 and logits large enough
    (std ~1) that a softcap of 2.0 changes them, so a missing step cannot pass by accident.
    """
    make_config, cls, tweak = CASES[case]
    torch.manual_seed(0)
    model = cls(make_config(n_layers))
    if tweak is not None:
        tweak(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.float().eval()
