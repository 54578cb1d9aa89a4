"""Distribution strategies from `runtime.distribution_strategy`, and who this worker is."""

import dataclasses
import json
import os
import socket

import tensorflow as tf

from tflm.config import ConfigError


def step_jit_compile(requested, mixed_precision, strategy):
    """Whether the training step is compiled with XLA: `requested` when set (a bool); for
    `None`, yes, except for mixed_bfloat16 on CPUs, where TensorFlow's own (oneDNN) kernels
    use the CPU's bfloat16 instructions and XLA's do not (a bfloat16 matmul at twice
    float32's rate, against XLA's at float32's; benchmarks/RESULTS.md)."""
    if requested is not None:
        return bool(requested)
    if is_parameter_server(strategy):
        return False
    on_cpu = all(tf.DeviceSpec.from_string(d).device_type == "CPU"
                 for d in strategy.extended.worker_devices)
    return not (on_cpu and mixed_precision == "mixed_bfloat16")


def make_strategy(runtime):
    """`one_device`, `mirrored`, `multi_worker` or `parameter_server` (both read TF_CONFIG),
    or `tpu`."""
    kind = runtime.distribution_strategy
    if kind == "one_device":
        device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError(
                "runtime.distribution_strategy=multi_worker reads the cluster from the TF_CONFIG "
                "environment variable, which is not set (tools/launch_local_cluster.py sets it "
                "for workers on this machine)."
            )
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    if kind == "parameter_server":
        return _parameter_server_strategy()
    if kind == "tpu":
        _check_tpu_address(runtime.tpu)
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=runtime.tpu or None)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            where = runtime.tpu or "the local machine"
            raise ConfigError(
                f"runtime.distribution_strategy=tpu: no TPU reachable at {where} ({e})."
            ) from None
    raise ConfigError(f"runtime.distribution_strategy={kind!r} is not a strategy.")


def _parameter_server_strategy():
    """ParameterServerStrategy on the chief; on a worker or ps task, serve until killed.

    The chief runs the training loop and schedules steps on the workers
    (`tf.distribute.coordinator.ClusterCoordinator`); variables are placed on the ps
    tasks round-robin. A worker that fails is tolerated: its scheduled steps run again
    elsewhere, and it rejoins when it comes back.
    """
    if not os.environ.get("TF_CONFIG"):
        raise ConfigError(
            "runtime.distribution_strategy=parameter_server reads the cluster (chief, workers, "
            "ps) from the TF_CONFIG environment variable, which is not set "
            "(tools/launch_local_cluster.py --num_ps=1 sets it for tasks on this machine).")
    # A failed worker's RPCs fail at once, for the coordinator to reschedule (TF's advice).
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if resolver.task_type in ("worker", "ps"):
        server = tf.distribute.Server(
            resolver.cluster_spec(), job_name=resolver.task_type, task_index=resolver.task_id,
            protocol=resolver.rpc_layer or "grpc", start=True)
        server.join()  # never returns: the launcher stops it once the chief is done
    if resolver.task_type != "chief":
        raise ConfigError(f"runtime.distribution_strategy=parameter_server: TF_CONFIG's task "
                          f"type is {resolver.task_type!r}; expected chief, worker or ps.")
    return tf.distribute.ParameterServerStrategy(resolver)


def is_parameter_server(strategy):
    return isinstance(strategy, tf.distribute.ParameterServerStrategy)


def _check_tpu_address(address, timeout=10.0):
    """A `grpc://host:port` TPU must answer a TCP connect: TF would retry it forever."""
    if not address.startswith("grpc://"):
        return
    host, _, port = address[len("grpc://"):].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"runtime.distribution_strategy=tpu: no TPU reachable at {address} ({e})."
        ) from None


@dataclasses.dataclass
class WorkerInfo:
    """Where this process sits in the cluster."""

    num_workers: int
    worker_index: int
    is_chief: bool
    num_local_replicas: int

    def input_context(self):
        """One input pipeline per worker; each builds the worker's share of the global batch."""
        return tf.distribute.InputContext(
            num_input_pipelines=self.num_workers,
            input_pipeline_id=self.worker_index,
            num_replicas_in_sync=self.num_workers,
        )

    def check_global_batch_size(self, global_batch_size):
        """Raises `ConfigError` unless `global_batch_size` splits evenly over the replicas
        (each worker takes an equal share, each of its replicas an equal slice of that);
        the replica count is known only once the strategy is."""
        replicas = self.num_workers * self.num_local_replicas
        if global_batch_size % replicas == 0:
            return
        lower = global_batch_size // replicas * replicas
        nearest = " or ".join(str(n) for n in (lower, lower + replicas) if n)
        raise ConfigError(
            f"data.global_batch_size: {global_batch_size} does not split over {replicas} "
            f"replicas ({self.num_workers} worker(s) x {self.num_local_replicas} device(s)); "
            f"use a multiple of {replicas}, e.g. {nearest}.")


def worker_info(strategy):
    """`WorkerInfo` of this process: from TF_CONFIG under multi-worker, else a single worker."""
    if is_parameter_server(strategy):
        # The chief runs the only training loop; each step is one worker's global batch.
        return WorkerInfo(1, 0, True, 1)
    local = len(strategy.extended.worker_devices)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return WorkerInfo(1, 0, True, local)
    config = json.loads(os.environ["TF_CONFIG"])
    cluster, task = config["cluster"], config["task"]
    # Workers are numbered chief first (if any), then workers.
    has_chief = "chief" in cluster
    num_workers = len(cluster.get("worker", [])) + (1 if has_chief else 0)
    if task["type"] == "chief":
        index = 0
    else:
        index = int(task["index"]) + (1 if has_chief else 0)
    return WorkerInfo(num_workers, index, index == 0, local)


class WorkerAgreement:
    """The smallest or largest of a number over every worker: all workers reach the same
    decision (which checkpoint to restore, whether to stop now) from their own views. A
    barrier too: it returns once every worker has called it. On one worker: the number."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self._gather = tf.function(self._gather_fn)

    def _gather_fn(self, value):
        def replica(value):
            return tf.distribute.get_replica_context().all_gather(tf.reshape(value, [1]), axis=0)

        return self.strategy.experimental_local_results(
            self.strategy.run(replica, args=(value,)))[0]

    def _values(self, value):
        if not self.multi_worker:
            return [float(value)]
        return self._gather(tf.constant(float(value), tf.float32)).numpy().tolist()

    def min(self, value):
        return min(self._values(value))

    def max(self, value):
        return max(self._values(value))
