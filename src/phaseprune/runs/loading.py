"""A task and a model made ready for a run: items, encoded prompts, weights, their records.

Shared by the commands that read a model on a task (``analyze``, ``prune``): prompts are
encoded and their option tokens verified before the weights load, so a bad tokenizer or an
unsupported family fails in seconds.
"""

from __future__ import annotations

import hashlib

import numpy as np

from phaseprune.core.errors import UsageError
from phaseprune.core.prompts import build_prompts
from phaseprune.engine.encoding import check_context, encode_prompts
from phaseprune.model.arch import context_window
from phaseprune.model.cpu import use_cores
from phaseprune.model.distributed import local_device
from phaseprune.model.load import load_model, load_tokenizer, with_revision
from phaseprune.runs.config import ModelConfig, TaskConfig
from phaseprune.tasks import load_task


def _tokens_hash(input_ids: list[list[int]]) -> str:
    digest = hashlib.sha256()
    for row in input_ids:
        digest.update(np.asarray(row, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def task_of(tc: TaskConfig, *, limit: int | None):
    """The :class:`~phaseprune.tasks.TaskData` a run's task settings name (``limit`` items)."""
    return load_task(
        tc.task,
        subjects=tc.subjects or None,
        data_dir=tc.data_dir,
        shots=tc.shots,
        limit=limit,
        lm_eval_include=tc.lm_eval_include,
    )


def task_record(task, enc, limit: int | None) -> dict:
    """``summary["task"]``: what was scored and how it was tokenised."""
    return {
        "name": task.name,
        "subjects": list(task.subjects),
        "split": task.split,
        "source": task.source,
        "source_kind": task.source_kind,
        "shots": task.shots,
        "limit": limit,
        "n_items": len(task.items),
        "n_options": task.n_options,
        "letters": list(enc.options.letters),
        "option_token_ids": list(enc.options.ids),
        "option_token_texts": list(enc.options.texts),
        "chat": enc.chat,
        "add_bos": enc.add_bos,
        "excluded_exemplars": list(task.excluded),
        "dropped_items": list(task.dropped),
        "prompt_tokens_mean": float(np.mean([len(r) for r in enc.input_ids])),
        "prompt_tokens_sha256": _tokens_hash(enc.input_ids),
    }


def encode_and_load(
    spec, task, tc: TaskConfig, mc: ModelConfig, *, progress: bool, check_layers=None
):
    """Tokenise and verify the prompts, then load the weights; ``(enc, model, info)``.

    The option tokens, the prompts' lengths and ``check_layers(n_layers)`` (settings that
    depend on the depth, from the config) are checked before the weights load, so a bad
    tokenizer, an unsupported family or an impossible setting fails in seconds.
    """
    spec = with_revision(spec, mc.revision)  # refused for local models
    tokenizer, config = load_tokenizer(spec, trust_remote_code=mc.trust_remote_code)
    enc = _encode(tokenizer, config, task, tc)
    if check_layers is not None:
        check_layers(config.get_text_config().num_hidden_layers)
    if mc.device.startswith("cpu"):
        use_cores(check_busy=progress)
    model, info = load_model(
        spec,
        dtype=mc.dtype,
        device=local_device(mc.device),  # launched: cuda is this process's own GPU
        trust_remote_code=mc.trust_remote_code,
        progress=progress,
    )
    return enc, model, info


def check_model_config(mc: ModelConfig) -> None:
    """Refuse a device this machine cannot run, before any file is read.

    The field checks have already refused malformed values (``--device tpu``); this one knows
    the machine: ``cuda`` without a visible GPU, or a GPU index past the last one.
    """
    import torch

    if mc.device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(
                f"--device {mc.device} but no CUDA device is visible; use --device cpu"
            )
        index = int(mc.device.partition(":")[2] or 0)
        if index >= count:
            raise UsageError(
                f"--device {mc.device}: this machine has {count} GPU(s), cuda:0..cuda:{count - 1}"
            )


def encode_held(model, tokenizer, task, tc: TaskConfig, mc: ModelConfig, *, check_layers=None):
    """``(enc, model, info)`` for a model the caller already holds (the Python API).

    The prompts are encoded and checked as for a loaded model; the model is put in eval mode
    with gradients off (the readout needs both) and otherwise left as it is: its dtype and
    device are recorded, not changed. Its name is the config's ``name_or_path``; its identity
    (``weights_sha256``) is ``memory:`` and the sha256 of its config and tensors
    (:func:`~phaseprune.model.identity.tensors_sha256`); its ``revision`` is None.
    """
    from phaseprune.model.arch import check_family, decoder_parts
    from phaseprune.model.identity import MEMORY, tensors_sha256
    from phaseprune.model.load import model_info

    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", "") or type(model).__name__
    check_family(getattr(config, "model_type", None), name)
    if tokenizer is None:
        raise UsageError("a model passed as an object needs its tokenizer too: pass tokenizer=...")
    parts = decoder_parts(model)
    check_tokenizer(tokenizer, parts.embed.weight.shape[0], name)
    enc = _encode(tokenizer, config, task, tc)
    if check_layers is not None:
        check_layers(len(parts.layers))
    dtype = str(parts.embed.weight.dtype).removeprefix("torch.")
    if mc.dtype is not None and mc.dtype != dtype:
        raise UsageError(
            f"the model passed is {dtype}, not {mc.dtype}: convert it (model.to(torch.{mc.dtype}))"
            " or leave dtype unset"
        )
    model.eval().requires_grad_(False)
    weights = MEMORY + tensors_sha256(model)  # its identity: no file to hash
    return enc, model, model_info(model, parts, name=name, path=name, dtype=dtype,
                                  weights_sha256=weights)  # fmt: skip


def check_tokenizer(tokenizer, vocab: int, name: str) -> None:
    """Refuse a tokenizer whose ids the model cannot embed (another model's tokenizer).

    A model's embedding may have more rows than its tokenizer has tokens (padded for speed),
    never fewer; a smaller tokenizer than the embedding by more than a padding's worth is
    also another model's (measured: a 497-token tokenizer against a 49,152-row embedding gave
    numbers without meaning, silently).
    """
    size = len(tokenizer)
    if size > vocab or size < vocab // 2:
        raise UsageError(
            f"the tokenizer has {size:,} tokens and {name}'s embedding {vocab:,} rows: it is "
            "another model's tokenizer; pass the one loaded with the model "
            "(AutoTokenizer.from_pretrained of the same checkpoint)"
        )


def _encode(tokenizer, config, task, tc: TaskConfig):
    """The task's prompts as token ids (option tokens verified), fitting the context window."""
    enc = encode_prompts(
        tokenizer,
        build_prompts(task),
        task.n_options,
        family=config.model_type,
        chat=tc.chat,
        add_bos=tc.bos,
    )
    check_context(task, enc.input_ids, context_window(config))
    return enc
