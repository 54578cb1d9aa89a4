"""Training: optimizers, callbacks and (later) the distributed trainer."""
