"""Tests for phaseprune.model.arch on tiny random models of every supported family."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
import transformers as tf
from tiny_models import (
    BATCH,
    CASES,
    D_MODEL,
    GQA,
    N_LAYERS,
    OPTION_IDS,
    SEQ,
    TOKENS,
    VOCAB,
    build_tiny,
)
from torch import nn

from phaseprune.core.errors import UsageError
from phaseprune.model.arch import SUPPORTED_FAMILIES, DecoderParts, decoder_parts, layer_output


def _inputs() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ))  # (batch, seq)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _capture_last_layer(parts: DecoderParts, run: Callable[[], object]) -> torch.Tensor:
    """Run ``run`` and return the last decoder layer's output, ``(batch, seq, d_model)``."""
    seen: list[torch.Tensor] = []
    handle = parts.layers[-1].register_forward_hook(
        lambda _mod, _args, out: seen.append(layer_output(out))
    )
    try:
        run()
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def test_cases_cover_every_family() -> None:
    covered = {CASES[c][1].config_class.model_type for c in CASES}
    assert covered == set(SUPPORTED_FAMILIES)


@pytest.mark.parametrize("case", list(CASES))
def test_last_layer_readout_equals_model_logits(case: str) -> None:
    model = build_tiny(case)
    parts = decoder_parts(model)
    inputs = _inputs()
    assert parts.family == model.config.model_type
    assert len(parts.layers) == N_LAYERS
    assert parts.embed is model.get_input_embeddings()
    assert parts.unembed is model.get_output_embeddings()

    with torch.no_grad():
        logits = None

        def run_model() -> None:
            nonlocal logits
            logits = model(**inputs, use_cache=False).logits  # (batch, seq, vocab)

        h_last = _capture_last_layer(parts, run_model)  # (batch, seq, d_model)
        h_base = _capture_last_layer(parts, lambda: parts.base(**inputs, use_cache=False))
        readout = parts.option_logits(h_last, OPTION_IDS)  # (batch, seq, n_options)

    torch.testing.assert_close(h_base, h_last, atol=0, rtol=0)
    assert readout.shape == (BATCH, SEQ, len(OPTION_IDS))
    torch.testing.assert_close(readout, logits[..., OPTION_IDS], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["gemma2", "gemma3"])
def test_softcap_changes_the_logits(case: str) -> None:
    model = build_tiny(case)
    parts = decoder_parts(model)
    assert parts.logit_softcap == 2.0
    uncapped = dataclasses.replace(parts, logit_softcap=None)
    with torch.no_grad():
        h_last = _capture_last_layer(parts, lambda: model(**_inputs(), use_cache=False))
        capped_logits = parts.option_logits(h_last, OPTION_IDS)
        raw_logits = uncapped.option_logits(h_last, OPTION_IDS)
    assert (capped_logits - raw_logits).abs().max() > 0.1
    assert capped_logits.abs().max() < 2.0


def test_softcap_only_for_families_that_use_it() -> None:
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**GQA, final_logit_softcapping=2.0))
    assert decoder_parts(model).logit_softcap is None


@pytest.mark.parametrize(
    "case, has_norm, has_project_out",
    [("opt", True, False), ("opt-project-out", True, True), ("opt-post-ln", False, False)],
)
def test_opt_variants(case: str, has_norm: bool, has_project_out: bool) -> None:
    parts = decoder_parts(build_tiny(case))
    assert (parts.final_norm is not None) == has_norm
    assert (parts.project_out is not None) == has_project_out


def _resid_0(parts: DecoderParts, input_ids: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """What a forward pre-hook on ``layers[0]`` sees as the hidden states."""
    seen: list[torch.Tensor] = []
    handle = parts.layers[0].register_forward_pre_hook(
        lambda _mod, args: seen.append(args[0])  # hidden states are positional in every family
    )
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        handle.remove()
    return seen[0]


def test_resid_0_includes_gpt2_position_embeddings() -> None:
    model = build_tiny("gpt2")
    parts = decoder_parts(model)
    input_ids = _inputs()["input_ids"]
    positions = torch.arange(SEQ)
    expected = model.transformer.wte.weight[input_ids] + model.transformer.wpe.weight[positions]
    torch.testing.assert_close(_resid_0(parts, input_ids, model), expected)


def test_resid_0_includes_gemma_embedding_scale() -> None:
    model = build_tiny("gemma")
    parts = decoder_parts(model)
    input_ids = _inputs()["input_ids"]
    expected = parts.embed.weight[input_ids] * math.sqrt(D_MODEL)
    torch.testing.assert_close(_resid_0(parts, input_ids, model), expected)


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: tf.BertForMaskedLM(
            tf.BertConfig(
                **TOKENS,
                vocab_size=VOCAB,
                hidden_size=D_MODEL,
                num_hidden_layers=1,
                num_attention_heads=4,
                intermediate_size=128,
            )
        ),
        lambda: tf.LlamaModel(tf.LlamaConfig(**GQA)),  # a supported family without its head
        lambda: nn.Linear(4, 4),
    ],
    ids=["bert", "llama-headless", "plain-module"],
)
def test_unsupported_model_raises_usage_error(make_model: Callable[[], nn.Module]) -> None:
    model = make_model()
    families = ".*".join(SUPPORTED_FAMILIES)
    with pytest.raises(UsageError, match=f"{type(model).__name__}.*{families}") as info:
        decoder_parts(model)
    assert "\n" not in str(info.value)


def test_layer_output_unwraps_tuples() -> None:
    h = torch.zeros(BATCH, SEQ, D_MODEL)
    assert layer_output(h) is h
    assert layer_output((h, None)) is h
    with pytest.raises(TypeError):
        layer_output(None)
