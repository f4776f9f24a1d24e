"""A model placed by accelerate (device_map with hooks, as `--device auto` does across GPUs).

No GPU here: layer 1 is offloaded to disk instead, which makes accelerate wrap the layers with
the same hooks that move tensors between devices. Readout and candidate scoring must equal the
plainly loaded model.
"""

import torch
import transformers as tf

from phaseprune.engine.candidates import final_readout, option_reduce, score_removals
from phaseprune.engine.readout import read_options


def test_accelerate_dispatched_model_scores_like_the_plain_one(tiny_llama_dir, tmp_path):
    plain = tf.AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.layers.2": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "cpu"}  # fmt: skip
    placed = tf.AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, device_map=device_map, offload_folder=str(tmp_path / "offload")
    ).eval()
    assert hasattr(placed.model.layers[1], "_hf_hook")  # accelerate really is in the loop
    g = torch.Generator().manual_seed(3)
    prefix = torch.randint(3, 200, (7,), generator=g).tolist()
    ids = [prefix + torch.randint(3, 200, (k,), generator=g).tolist() for k in (2, 5, 3, 4)]
    options = [261, 262, 270, 271]
    reduce = option_reduce(options)
    groups = [[0, 1, 2, 3]]
    for removed in ((), (0,)):
        a = score_removals(plain, removed, [1, 2], ids, reduce, max_tokens=16, groups=groups)
        b = score_removals(placed, removed, [1, 2], ids, reduce, max_tokens=16, groups=groups)
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-5)
        ref = final_readout(plain, removed, ids, reduce, groups=groups)
        torch.testing.assert_close(final_readout(placed, removed, ids, reduce, groups=groups), ref)
    from phaseprune.model.arch import decoder_parts

    torch.testing.assert_close(
        read_options(decoder_parts(placed), ids, options, groups=groups, progress=False),
        read_options(decoder_parts(plain), ids, options, groups=groups, progress=False),
        atol=1e-5,
        rtol=1e-5,
    )
