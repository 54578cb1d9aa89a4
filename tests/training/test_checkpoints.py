"""Checkpoints in one process: the commit, falling back from a damaged newest checkpoint to
the newest whole one, and never a silent start from step 0."""

import json
import shutil

import numpy as np
import pytest

from tflm.experiment import load_experiment
from tflm.run_dir import RunDir
from tflm.tasks import get_task
from tflm.training.checkpoints import CheckpointError
from tflm.training.trainer import Trainer

OVERRIDES = ("data.sequence_length=32,data.global_batch_size=4,data.shuffle_buffer_size=50,"
             "model.num_layers=1,trainer.train_steps=20,trainer.checkpoint_every=5,"
             "trainer.log_every=5,trainer.steps_per_loop=5,trainer.warmup_steps=1,"
             "trainer.jit_compile=false")


def _config(extra=""):
    return load_experiment("configs/tiny_gpt.yaml", ",".join(filter(None, [OVERRIDES, extra])))


def _weights(trainer):
    return np.concatenate([np.ravel(v.numpy()) for v in trainer.model.trainable_variables])


def _train(model_dir, until_step=None, extra=""):
    lines = []
    trainer = Trainer(get_task(_config(extra)), str(model_dir), print_fn=lines.append)
    status = trainer.train(until_step=until_step)
    return trainer, status, "\n".join(lines)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run's weights, and a run stopped at step 15 (checkpoints 5..15)."""
    root = tmp_path_factory.mktemp("runs")
    straight, _, _ = _train(root / "straight")
    _train(root / "stopped", until_step=15)
    return _weights(straight), root / "stopped"


def _copy(runs, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(runs[1], model_dir)
    return model_dir


def test_every_step_is_committed_after_its_files(runs):
    model_dir = runs[1]
    run = RunDir(model_dir)
    assert run.checkpoint_steps() == [15, 10, 5]
    record = run.read_commit(15)
    assert record["step"] == 15 and record["num_workers"] == 1
    assert record["data_sharding"] == "files"
    assert (model_dir / "data" / "worker-0" / "ckpt-15.index").exists()
    assert run.latest_checkpoint() == str(model_dir / "checkpoints" / "ckpt-15")


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "index deleted": (lambda d: (d / "checkpoints" / "ckpt-15.index").unlink(),
                      "ckpt-15.index is missing"),
    "data truncated": (lambda d: (d / "checkpoints" / "ckpt-15.data-00000-of-00001").write_bytes(
        (d / "checkpoints" / "ckpt-15.data-00000-of-00001").read_bytes()[:100]),
        "cannot be read back"),
    "data corrupted": (lambda d: _flip_a_byte(d / "checkpoints" / "ckpt-15.data-00000-of-00001"),
                       "Checksum does not match"),
    "input position corrupted": (
        lambda d: _flip_a_byte(d / "data" / "worker-0" / "ckpt-15.data-00000-of-00001"),
        "worker-0/ckpt-15: cannot be read back"),
    "not committed": (lambda d: (d / "checkpoints" / "ckpt-15.commit.json").unlink(),
                      "ckpt-15: not committed"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_whole_one(runs, tmp_path, damage):
    model_dir = _copy(runs, tmp_path)
    make_damage, reason = DAMAGE[damage]
    make_damage(model_dir)
    trainer, status, log = _train(model_dir)
    assert status == "completed"
    assert f"skipping checkpoint {model_dir}/checkpoints/ckpt-15" in log and reason in log, log
    assert f"resumed from {model_dir}/checkpoints/ckpt-10 at step 10" in log, log
    # The older checkpoints survived, and the resumed run ends where the uninterrupted one did.
    np.testing.assert_allclose(_weights(trainer), runs[0], atol=1e-6)
    assert RunDir(model_dir).read_commit(20) is not None


def test_what_a_killed_save_left_behind_is_removed_on_the_next_start(runs, tmp_path):
    model_dir = _copy(runs, tmp_path)
    # As TensorFlow leaves them when a save of step 20 is killed midway.
    leftovers = [model_dir / "checkpoints" / "ckpt-20_temp" / "part-00000-of-00001.index",
                 model_dir / "data" / "worker-0" / "ckpt-20_temp" / "part-00000-of-00001.index",
                 model_dir / "checkpoints" / "ckpt-20.commit.json.tmp",
                 model_dir / "tmp" / "worker-1" / "ckpt-20.index"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    trainer, status, log = _train(model_dir)
    assert status == "completed"
    assert "resumed from" in log and "ckpt-15 at step 15" in log, log
    for path in (leftovers[0].parent, leftovers[1].parent, leftovers[2], leftovers[3].parent.parent):
        assert f"removed {path}, left by a save that did not finish" in log, (path, log)
        assert not path.exists()
    np.testing.assert_allclose(_weights(trainer), runs[0], atol=1e-6)


def test_no_restorable_checkpoint_is_an_error_not_a_fresh_start(runs, tmp_path):
    model_dir = _copy(runs, tmp_path)
    for index in (model_dir / "checkpoints").glob("*.index"):
        index.unlink()
    with pytest.raises(CheckpointError, match=r"none of the checkpoints ckpt-15, ckpt-10, ckpt-5 "
                                              r"can be restored.*start_over_if_unrestorable"):
        _train(model_dir)
    assert sorted(p.name for p in (model_dir / "checkpoints").glob("*.commit.json")) == [
        "ckpt-10.commit.json", "ckpt-15.commit.json", "ckpt-5.commit.json"]

    trainer, status, log = _train(model_dir, extra="trainer.start_over_if_unrestorable=true")
    assert status == "completed" and "starting over from step 0" in log
    aside = [p for p in model_dir.iterdir() if p.name.startswith("checkpoints.unrestorable-")]
    assert len(aside) == 1 and (aside[0] / "ckpt-15.commit.json").exists()
    np.testing.assert_allclose(_weights(trainer), runs[0], atol=1e-6)


def test_keep_checkpoints_prunes_older_steps_with_their_input_positions(tmp_path):
    _train(tmp_path / "run", extra="trainer.keep_checkpoints=2")
    run = RunDir(tmp_path / "run")
    assert run.checkpoint_steps(include_input_positions=True) == [20, 15]
    assert json.loads((tmp_path / "run" / "checkpoints" / "ckpt-20.commit.json").read_text())[
        "step"] == 20


def test_another_worker_count_with_file_sharding_is_a_clear_error_or_a_restart(runs, tmp_path):
    """A commit written by 2 workers that each read their own files: 1 worker cannot
    continue their positions; `restart` keeps the model state and starts the input over."""
    model_dir = _copy(runs, tmp_path)
    commit = model_dir / "checkpoints" / "ckpt-15.commit.json"
    record = json.loads(commit.read_text())
    commit.write_text(json.dumps(dict(record, num_workers=2)))
    with pytest.raises(CheckpointError, match=r"ckpt-15 was written by 2 workers with "
                                              r"data.sharding=files; 1 workers cannot continue"):
        _train(model_dir)
    trainer, status, log = _train(model_dir,
                                  extra="trainer.on_input_position_mismatch=restart")
    assert status == "completed"
    assert "the input starts again from its beginning" in log
    assert f"resumed from {model_dir}/checkpoints/ckpt-15 at step 15" in log


def test_global_batch_sharding_reads_the_same_batches_as_one_pipeline():
    import tensorflow as tf
    from tflm.training.strategy import WorkerInfo
    config = _config("data.sharding=global_batch")
    plain = next(iter(get_task(_config()).dataset()))
    context = WorkerInfo(2, 1, False, 1).input_context()
    whole = next(iter(get_task(config).dataset(input_context=context)))
    tf.nest.map_structure(np.testing.assert_array_equal, whole, plain)
