"""Encoder-decoder runs resume exactly and train the same on two workers: `seq2seq` on
pairs and `denoising` on raw text (its noise redrawn per epoch, keyed by seed and row)
stopped half-way end where straight runs do; a two-worker `seq2seq` run ends with the
weights of one worker on the same global batches.

Run as a script, this file is one worker of the two-worker test:
    python tests/tasks/test_seq2seq_workers.py MODEL_DIR DATA_PATH TRAIN_STEPS
"""

import pathlib
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tools"), str(REPO_ROOT / "tests")]
from labelled_fixtures import write_reversal_pairs  # noqa: E402
from worker_runs import train_and_save_weights, two_workers_weights  # noqa: E402

from tflm.experiment import load_experiment  # noqa: E402
from tflm.tasks import get_task  # noqa: E402
from tflm.training.trainer import Trainer  # noqa: E402

QUIET = dict(print_fn=lambda line: None)
# Small shapes; 4 steps of 2 loops, a checkpoint only at the end (or where a run stops).
SMALL = ("model.num_layers=1,model.hidden_dim=32,model.intermediate_dim=64,"
         "data.global_batch_size=8,data.sharding=global_batch,trainer.train_steps=4,"
         "trainer.log_every=2,trainer.steps_per_loop=2,trainer.checkpoint_every=100,"
         "trainer.warmup_steps=0,trainer.jit_compile=false")
SEQ2SEQ = str(REPO_ROOT / "configs" / "tiny_seq2seq.yaml")
DENOISING = str(REPO_ROOT / "configs" / "tiny_denoising.yaml")


def _config(config_file, extra=""):
    return load_experiment(config_file, ",".join(filter(None, [SMALL, extra])))


def _weights(trainer):
    return np.concatenate([np.ravel(v.numpy()) for v in trainer.model.trainable_variables])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_reversal_pairs(str(path), count=64)
    return str(path)


@pytest.mark.parametrize("task", ["seq2seq", "denoising"])
def test_two_plus_two_steps_end_where_four_do(tmp_path, pairs, task):
    # Denoising: 2 rows of 16 per batch, so the 4 steps run over a few epochs of the split
    # (noise redrawn each) and the stop lands mid-epoch.
    config = (_config(SEQ2SEQ, f"data.input_path={pairs}") if task == "seq2seq" else
              _config(DENOISING, "data.sequence_length=32,data.global_batch_size=2"))
    straight = Trainer(get_task(config), str(tmp_path / "straight"), **QUIET)
    assert straight.train() == "completed"
    Trainer(get_task(config), str(tmp_path / "pieces"), **QUIET).train(until_step=2)
    resumed = Trainer(get_task(config), str(tmp_path / "pieces"), **QUIET)
    assert resumed.train() == "completed" and int(resumed.step.numpy()) == 4
    np.testing.assert_allclose(_weights(resumed), _weights(straight), atol=1e-6)


def _worker(model_dir, data_path, steps):
    config = _config(SEQ2SEQ, f"data.input_path={data_path},trainer.train_steps={steps},"
                              "runtime.distribution_strategy=multi_worker")
    trainer = Trainer(get_task(config), model_dir, print_fn=lambda line: print(line, flush=True))
    train_and_save_weights(trainer, model_dir, _weights)


def test_two_workers_end_with_the_weights_of_one(tmp_path, pairs):
    one = Trainer(get_task(_config(SEQ2SEQ, f"data.input_path={pairs}")),
                  str(tmp_path / "one"), **QUIET)
    assert one.train() == "completed"
    first = two_workers_weights(__file__, [pairs, 4], tmp_path, 4)
    np.testing.assert_allclose(first, _weights(one), atol=1e-5)


if __name__ == "__main__":
    _worker(*sys.argv[1:3], int(sys.argv[3]))
