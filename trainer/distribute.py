"""Training on several devices (`--strategy mirrored`) or machines (`--strategy multiworker`) with tf.distribute.

Scaling rule (docs/DISTRIBUTED_TRAINING.md): `--batch-size` is the batch of ONE replica (one GPU, or one CPU
worker), so each replica sees the same batch whatever the cluster; the global batch is batch-size x replicas,
and the learning rates are multiplied by the replica count too (the linear scaling rule: a K times larger
batch averages K times more gradients, so a K times larger step keeps the per-image update about the same).
With `default` (one replica) nothing changes.

Multi-worker runs: every worker runs the same steps (each all-reduce needs all of them), and only the chief
writes the run folder and the export. The chief is the `chief` task of TF_CONFIG, or worker 0 when the cluster
has no `chief`. Every other worker runs on a private copy of the run folder's resumable state (the
checkpoints, logs and state.json the chief wrote earlier, so a rerun after a kill restores every worker to the
same epoch), writes only there, and deletes it at the end. The run folder must therefore be on storage that
every worker sees under the same path (as the dataset).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multiworker")


@dataclass(frozen=True)
class ClusterRole:
    """This process's place in a TF_CONFIG cluster (a single process without TF_CONFIG)."""

    task_type: str
    task_index: int
    workers: int  # chief + workers in the cluster (1 without TF_CONFIG)
    is_chief: bool

    @property
    def name(self) -> str:
        return f"{self.task_type}{self.task_index}"


@dataclass(frozen=True)
class Distribution:
    name: str  # one of STRATEGIES
    strategy: Any  # tf.distribute.Strategy
    replicas: int  # replicas in sync (devices over all workers)
    role: ClusterRole

    @property
    def is_chief(self) -> bool:
        return self.role.is_chief


def cluster_role(environ: Mapping[str, str] | None = None) -> ClusterRole:
    """Parse TF_CONFIG (as Slurm/Kubernetes launch scripts set it, docs/DISTRIBUTED_TRAINING.md)."""
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        return ClusterRole("chief", 0, 1, True)
    try:
        config = json.loads(text)
        cluster = config.get("cluster", {})
        task = config.get("task", {})
        task_type, task_index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"TF_CONFIG is not valid: {exc}; see docs/DISTRIBUTED_TRAINING.md") from None
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    if task_type not in cluster or not 0 <= task_index < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG task {task_type} {task_index} is not in its cluster {sorted(cluster)}")
    is_chief = task_type == "chief" or (task_type == "worker" and task_index == 0 and "chief" not in cluster)
    return ClusterRole(task_type, task_index, workers, is_chief)


def create_distribution(name: str) -> Distribution:
    """The tf.distribute strategy for `--strategy`. Call it before TensorFlow runs any operation: a multi-worker
    strategy configures the collective runtime, which has to happen before it starts."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    import tensorflow as tf

    role = cluster_role() if name == "multiworker" else ClusterRole("chief", 0, 1, True)
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        if role.workers == 1:
            log.warning("--strategy multiworker without a TF_CONFIG cluster: training on this machine only")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _build_from_local_batch()
    replicas = int(strategy.num_replicas_in_sync)
    devices = () if name == "default" else strategy.extended.worker_devices  # (the default one has none to list)
    log.info("strategy %s: %d replica(s) in sync, %d worker(s); this process is %s%s, devices %s", name, replicas,
             role.workers, role.name, " (chief)" if role.is_chief else "", ", ".join(devices) or "default")
    return Distribution(name, strategy, replicas, role)


def scaled_batch_size(per_replica: int, replicas: int) -> int:
    return per_replica * replicas


def scaled_learning_rate(learning_rate: float, replicas: int) -> float:
    return learning_rate * replicas


def scale_config(cfg, replicas: int):  # trainer.train.TrainConfig (no import cycle)
    """The config with the global batch size and the scaled learning rates (see the module docstring)."""
    if replicas == 1:
        return cfg
    scaled = dataclasses.replace(
        cfg,
        batch_size=scaled_batch_size(cfg.batch_size, replicas),
        lr_stage1=scaled_learning_rate(cfg.lr_stage1, replicas),
        lr_stage2=scaled_learning_rate(cfg.lr_stage2, replicas),
    )
    log.info("%d replicas: global batch %d (%d per replica), learning rates %.3g / %.3g (x%d)", replicas,
             scaled.batch_size, cfg.batch_size, scaled.lr_stage1, scaled.lr_stage2, replicas)
    return scaled


@contextlib.contextmanager
def worker_view(cfg, dist: Distribution) -> Iterator[Any]:  # TrainConfig
    """The config this process trains with: scaled for the replicas; on a non-chief worker, pointed at a private
    copy of the run folder (deleted afterwards) and without export, so that only the chief writes."""
    scaled = scale_config(cfg, dist.replicas)
    if dist.is_chief:
        yield scaled
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"pneumo-trainer-{dist.role.name}-"))
    try:
        private_run = scratch / "run"  # the cache goes next to it (run_dir.parent / "cache"), private too
        _copy_resumable_state(Path(cfg.run_dir), private_run, cfg.export_dir)
        log.info("%s is not the chief: writing only to %s (removed at the end)", dist.role.name, scratch)
        yield dataclasses.replace(scaled, run_dir=private_run, export_dir=None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _copy_resumable_state(run_dir: Path, private: Path, export_dir: Path | None) -> None:
    """What the chief left in the run folder (checkpoints, backups, logs, state.json), without its report and
    export: a resumed worker must restore exactly the epoch the chief restores, or the all-reduces mismatch."""
    private.mkdir(parents=True)
    if not run_dir.is_dir():
        return
    skip = {"report"}
    if export_dir is not None and Path(export_dir).resolve().parent == run_dir.resolve():
        skip.add(Path(export_dir).name)
    for item in run_dir.iterdir():
        if item.name in skip:
            continue
        if item.is_dir():
            shutil.copytree(item, private / item.name)
        elif item.is_file():
            shutil.copy2(item, private / item.name)


def _build_from_local_batch() -> None:
    """Work around Keras 3 fit() failing under MultiWorkerMirroredStrategy (keras-team/keras#20585, open with
    Keras 3.15): before the first step, fit() takes one batch to build the model and optimizer symbolically and
    averages it over the replicas with strategy.reduce(), which this strategy cannot do with a (x, y) structure
    ("Attempt to convert a value (PerReplica...)"). Only the batch's shapes matter to that build, so this takes
    the batch of the first local replica instead. Applied only for --strategy multiworker."""
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as trainer_module
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    if getattr(TensorFlowTrainer._maybe_symbolic_build, "_pneumo_local_batch", False):
        return

    def maybe_symbolic_build(self, iterator=None, data_batch=None):  # Keras' signature
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            local = self.distribute_strategy.experimental_local_results
            for _, _, it in iterator:
                data_batch = tree.map_structure(
                    lambda x: local(x)[0] if isinstance(x, tf.distribute.DistributedValues) else x, next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    maybe_symbolic_build._pneumo_local_batch = True  # type: ignore[attr-defined]  # a marker on the function: patch once
    TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build

    # Same Keras path, next step: each step's logs (scalar losses and metrics) are averaged over the workers
    # with strategy.reduce("MEAN", v, axis=0), which fails on a scalar ("Invalid reduction dimension 0").
    # Averaged element-wise over the replicas instead, every worker gets the same logs, so EarlyStopping and
    # the best-epoch choice agree on all of them.
    original = trainer_module.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):  # Keras' signature
        if reduction in ("auto", "mean") and trainer_module._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    trainer_module.reduce_per_replica = reduce_per_replica


def tf_config(hosts: list[str], index: int, port: int) -> str:
    """TF_CONFIG for one process per host (hosts in the same order on every worker; the first is the chief)."""
    if not hosts or not 0 <= index < len(hosts):
        raise ValueError(f"index {index} is not one of the {len(hosts)} hosts")
    if not 0 < port < 65536:
        raise ValueError(f"not a port: {port}")
    return json.dumps({"cluster": {"worker": [f"{host}:{port}" for host in hosts]},
                       "task": {"type": "worker", "index": index}})


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.distribute --index K --port P HOST...`: print TF_CONFIG (deploy/slurm, deploy/kubernetes)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainer.distribute", description=main.__doc__)
    parser.add_argument("hosts", nargs="+", help="every worker's host name, the same list and order on each worker")
    parser.add_argument("--index", type=int, required=True, help="this worker's position in the list (0 = chief)")
    parser.add_argument("--port", type=int, default=12345, help="the port every worker listens on (default 12345)")
    args = parser.parse_args(argv)
    try:
        print(tf_config(args.hosts, args.index, args.port))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
