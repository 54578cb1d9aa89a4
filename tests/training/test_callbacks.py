import numpy as np

from tflm.training.callbacks import ThroughputLogger


def test_logs_interval_loss_tokens_per_second_and_mfu():
    lines = []
    logger = ThroughputLogger(tokens_per_step=100, log_every=2, flops_per_token=1e6,
                              peak_flops=1e9, print_fn=lines.append)
    logger.on_train_begin()
    losses = [4.0, 2.0, 3.0, 1.0]
    for i, loss in enumerate(losses):
        running = float(np.mean(losses[: i + 1]))  # what Keras logs: the epoch's running mean
        logger.on_train_batch_end(i, {"loss": running})
    assert [r["step"] for r in logger.history] == [2, 4]
    np.testing.assert_allclose([r["loss"] for r in logger.history], [3.0, 2.0])
    for record in logger.history:
        assert record["tokens_per_second"] > 0
        np.testing.assert_allclose(record["tflops"], record["tokens_per_second"] * 1e6 / 1e12)
        np.testing.assert_allclose(record["mfu"], record["tokens_per_second"] * 1e6 / 1e9)
    assert len(lines) == 2 and "includes compilation" in lines[0]
    assert "tokens/s" in lines[1] and "MFU" in lines[1] and "loss 2.0000" in lines[1]
