"""Model identity: weights hashed (and cached), hub revisions, and runs refused on other weights."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from phaseprune.cli import main
from phaseprune.core.errors import UsageError
from phaseprune.model import identity
from phaseprune.model.load import ModelSpec, load_model, resolve_model, with_revision


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty hash cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv(identity.CACHE_ENV, str(root))
    return root / "hashes.json"


@pytest.fixture
def counted(monkeypatch) -> list[Path]:
    """The files actually read by the hash function (cache misses)."""
    reads: list[Path] = []
    real = identity.file_sha256

    def spy(path, *args, **kwargs):
        reads.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(identity, "file_sha256", spy)
    return reads


def _checkpoint(folder: Path) -> Path:
    folder.mkdir()
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"first shard")
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"second shard")
    (folder / "training_args.bin").write_bytes(b"\x00\x01")
    (folder / "config.json").write_text("{}")
    return folder


def test_directory_hash_is_the_sha256sum_manifest(tmp_path):
    folder = _checkpoint(tmp_path / "ckpt")
    manifest = "".join(
        f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n"
        for n in sorted(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                         "training_args.bin"])
    )  # fmt: skip
    assert identity.weights_sha256(folder) == hashlib.sha256(manifest.encode()).hexdigest()
    # a single file (a GGUF) is its plain sha256
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" * 1000)
    assert identity.weights_sha256(gguf) == hashlib.sha256(b"GGUF" * 1000).hexdigest()
    (tmp_path / "empty").mkdir()
    assert identity.weights_sha256(tmp_path / "empty") is None  # no weight files


def test_hash_cache_hits_and_invalidation(tmp_path, counted, hash_cache):
    folder = _checkpoint(tmp_path / "ckpt")
    first = identity.weights_sha256(folder)
    assert len(counted) == 3 and hash_cache.is_file()
    assert identity.weights_sha256(folder) == first
    assert len(counted) == 3  # every file from the cache: nothing read again
    # the config is not a weight: editing it changes nothing and reads nothing
    (folder / "config.json").write_text('{"x": 1}')
    assert identity.weights_sha256(folder) == first and len(counted) == 3
    # the same size, new bytes, a new mtime: that file alone is read again, the hash changes
    shard = folder / "model-00002-of-00002.safetensors"
    stat = shard.stat()
    shard.write_bytes(b"SECOND SHARD")
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    edited = identity.weights_sha256(folder)
    assert edited != first and counted[3:] == [shard.resolve()]
    # touched only: read again (mtime moved), same hash
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000))
    assert identity.weights_sha256(folder) == edited and len(counted) == 5


def test_damaged_cache_is_ignored_and_replaced(tmp_path, counted, hash_cache):
    folder = _checkpoint(tmp_path / "ckpt")
    want = identity.weights_sha256(folder)
    hash_cache.write_text("{ not json")
    assert identity.weights_sha256(folder) == want
    assert len(counted) == 6  # recomputed
    assert len(json.loads(hash_cache.read_text())) == 3  # and written whole again


def test_hub_revision_from_the_cache_snapshot(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert identity.hub_revision("org/tiny") == commit
    assert identity.hub_revision("org/tiny", "main") == commit
    assert identity.hub_revision("org/tiny", commit) == commit
    assert identity.hub_revision("org/absent") is None


def test_revision_applies_to_hub_ids_only(tiny_llama_dir, toy_mmlu_dir, tmp_path, capsys):
    hub = with_revision(resolve_model("org/some-model"), "v1.0")
    assert hub == ModelSpec("org/some-model", "org/some-model", None, "v1.0")
    with pytest.raises(UsageError, match="--revision main applies to hub ids.*drop --revision"):
        with_revision(resolve_model(str(tiny_llama_dir)), "main")
    err = _one_line_error(capsys, ["analyze", "--model", tiny_llama_dir, "--revision", "main",
                                   "--task", "mmlu", "--data-dir", toy_mmlu_dir,
                                   "--out", tmp_path / "a", "--quiet"])  # fmt: skip
    assert "--revision main applies to hub ids" in err


def test_loaded_model_records_its_weights_hash(tiny_llama_dir):
    _, info = load_model(resolve_model(str(tiny_llama_dir)), progress=False)
    assert info.weights_sha256 == identity.weights_sha256(tiny_llama_dir)
    assert info.revision is None  # a local directory has no hub revision


def _prune(model, data, out, *extra):
    return ["prune", "--model", str(model), "--task", "mmlu", "--data-dir", str(data),
            "--calib", "4", "--eval", "8", "--strategy", "last", "--out", str(out), "--quiet",
            "--n-boot", "20", "--no-plots", *extra]  # fmt: skip


def _one_line_error(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_edited_weights_refuse_resume_and_export(tiny_llama_dir, toy_mmlu_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    out = tmp_path / "run"
    assert main(_prune(model, toy_mmlu_dir, out, "--steps", "1")) == 0
    capsys.readouterr()
    recorded = json.loads((out / "trajectory.json").read_text())["model"]["weights_sha256"]
    assert recorded == identity.weights_sha256(model)
    # the edit: the final norm's weight times 3
    weights = model / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 3
    save_file(tensors, weights, metadata={"format": "pt"})
    edited = identity.weights_sha256(model)
    assert edited != recorded
    err = _one_line_error(capsys, _prune(model, toy_mmlu_dir, out, "--steps", "2", "--resume"))
    assert f"other model weights (sha256 {recorded[:16]}… in the run, {edited[:16]}… now)" in err
    assert "--overwrite" in err
    err = _one_line_error(capsys, ["export", out, "--step", "1", "--out", tmp_path / "e"])
    assert "is not the one this run pruned: other model weights" in err
    assert recorded[:16] in err and edited[:16] in err
    assert not (tmp_path / "e").exists()
    # the original weights back: the same run resumes
    tensors["model.norm.weight"] = tensors["model.norm.weight"] / 3
    save_file(tensors, weights, metadata={"format": "pt"})
    assert identity.weights_sha256(model) == recorded
    assert main(_prune(model, toy_mmlu_dir, out, "--steps", "2", "--resume")) == 0
    assert len(json.loads((out / "trajectory.json").read_text())["steps"]) == 2


def test_old_records_without_a_hash_are_named(tiny_llama_dir, toy_mmlu_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_prune(tiny_llama_dir, toy_mmlu_dir, out, "--steps", "1")) == 0
    capsys.readouterr()
    path = out / "trajectory.json"
    traj = json.loads(path.read_text())
    del traj["model"]["weights_sha256"]  # as written before weights were hashed,
    traj["fingerprint"] = "0" * 64  # under a fingerprint without the hash
    path.write_text(json.dumps(traj))
    err = _one_line_error(capsys, _prune(tiny_llama_dir, toy_mmlu_dir, out, "--steps", "2",
                                         "--resume"))  # fmt: skip
    assert "the run recorded no weights hash" in err
    with pytest.warns(UserWarning, match="records no weights hash"):
        assert main(["export", str(out), "--step", "1", "--out", str(tmp_path / "e")]) == 0


def _old_recipe_key(run) -> str:
    """The fingerprint as phaseprune computed it before --revision, --lm-eval-include and
    weights_sha256 existed (the fields left out, everything else the same)."""
    import dataclasses

    from phaseprune import __version__
    from phaseprune.runs.outdir import fingerprint
    from phaseprune.runs.resume import VOLATILE

    settings = {k: v for k, v in dataclasses.asdict(run.cfg).items() if k not in VOLATILE}
    settings["model"]["precision"] = "exact"  # every run of that time computed exactly
    settings["objective"] = settings["objective"] or "accuracy"  # every strategy's default then
    settings["model"].pop("revision")
    settings["task"].pop("lm_eval_include")
    # phase-aware's variants, healing and --order came later
    later_fields = ("heal", "heal_when", "heal_items", "heal_data", "order")
    for later in ("spare", "after_decisive", "decisive", *later_fields):
        settings.pop(later)
    info = dataclasses.asdict(run.info)
    info.pop("weights_sha256")
    answers = [(it.item_id, it.answer) for it in run.task.items]
    return fingerprint(settings, info, run.record_task, answers, __version__)


def _key(run) -> str:
    """The recipe key prune computes for ``run`` (cfg, info, record_task and task's items)."""
    import dataclasses

    from phaseprune.runs.resume import Recipe, recipe_key

    answers = [(it.item_id, it.answer) for it in run.task.items]
    return recipe_key(run.cfg, Recipe(dataclasses.asdict(run.info), run.record_task, answers))


def test_runs_made_before_the_new_fields_keep_their_fingerprint():
    import dataclasses
    from types import SimpleNamespace

    from phaseprune.model.load import ModelInfo
    from phaseprune.runs.config import ModelConfig, PruneConfig
    from phaseprune.tasks import MCItem

    gguf = ModelInfo(name="m.gguf", path="/x", gguf_file="m.gguf", revision="ab" * 32,
                     architecture="LlamaForCausalLM", family="llama", n_layers=4,
                     dtype="float32", device="cpu", weights_sha256="ab" * 32)  # fmt: skip
    run = SimpleNamespace(
        cfg=PruneConfig(out="o"), info=gguf, record_task={"name": "t"},
        task=SimpleNamespace(items=[MCItem("i", "s", "q", ("a", "b"), 1)]),
    )  # fmt: skip
    # a GGUF file's weights hash is its revision: the old fingerprint is kept
    assert _key(run) == _old_recipe_key(run)
    # a hash the old runs could not have recorded (a checkpoint directory's) changes it, and a
    # setting given a value does too
    run.info = dataclasses.replace(gguf, gguf_file=None, revision=None, weights_sha256="cd" * 32)
    assert _key(run) != _old_recipe_key(run)
    run.info = gguf
    run.cfg = PruneConfig(out="o", model=ModelConfig(revision="main"))
    assert _key(run) != _old_recipe_key(run)


def test_phase_aware_defaults_changed_and_old_runs_keep_their_fingerprint():
    import dataclasses
    from types import SimpleNamespace

    from phaseprune.model.load import ModelInfo
    from phaseprune.runs.config import PruneConfig
    from phaseprune.tasks import MCItem

    gguf = ModelInfo(name="m.gguf", path="/x", gguf_file="m.gguf", revision="ab" * 32,
                     architecture="LlamaForCausalLM", family="llama", n_layers=4,
                     dtype="float32", device="cpu", weights_sha256="ab" * 32)  # fmt: skip
    run = SimpleNamespace(
        info=gguf,
        record_task={"name": "t"},
        task=SimpleNamespace(items=[MCItem("i", "s", "q", ("a", "b"), 1)]),
    )
    first = {
        "decisive": "objective",
        "after_decisive": "block-influence",
        "spare": 0,
        "objective": "accuracy",
    }

    def key(**settings):
        run.cfg = PruneConfig(out="o", **settings)
        return _key(run)

    # phase-aware's first version, now given as flags, is the recipe its old runs were made with
    run.cfg = PruneConfig(out="o", strategy="phase-aware", **first)
    assert key(strategy="phase-aware", **first) == _old_recipe_key(run)
    # its new defaults are another recipe, the objective (kl now) among them
    assert key(strategy="phase-aware") != key(strategy="phase-aware", **first)
    accuracy_first = {k: v for k, v in first.items() if k != "objective"}
    assert key(strategy="phase-aware", **accuracy_first) != key(strategy="phase-aware", **first)
    assert key(strategy="phase-aware", objective="kl", **accuracy_first) == key(
        strategy="phase-aware", **accuracy_first
    )
    defaults = PruneConfig(out="o")
    assert (defaults.decisive, defaults.after_decisive, defaults.spare) == ("tail", "transition",
                                                                            None)  # fmt: skip
    # iterative's objective stays accuracy: its runs keep their fingerprint
    assert key(strategy="iterative") == key(strategy="iterative", objective="accuracy")
    # settings only phase-aware reads do not touch another strategy's fingerprint
    assert key(strategy="angular") == key(strategy="angular", **first)
    assert key(strategy="angular", spare=3) == key(strategy="angular")
    run.cfg = dataclasses.replace(run.cfg, strategy="angular")
    assert key(strategy="angular") == _old_recipe_key(run)
