"""`pneumo-trainer train --strategy mirrored|multiworker` through the trainer's own train(), on CPU.

Each training runs in child processes: TensorFlow's devices and collectives are configured once per process,
and the test process must stay a plain one-device process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pneumo_desktop.core import model_card as mc
from tests.conftest import REPO_ROOT
from tests.test_trainer_data import make_dataset_folder
from trainer.distribute import ClusterRole, cluster_role, scale_config
from trainer.train import TrainConfig

# A trainer process that records which replicas built the model's step (the model's layers are traced once per
# replica) and the strategy's replica count, then runs the real command line.
_CHILD = r"""
import atexit, json, sys
import tensorflow as tf

logical, record_path, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
if logical > 1:  # split the CPU before TensorFlow starts
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical)

import keras
from trainer import distribute

record = {"replica_ids": [], "devices": [], "replicas": None}
atexit.register(lambda: open(record_path, "w").write(json.dumps(record)))

create = distribute.create_distribution
def recording_create(name):
    dist = create(name)
    record["replicas"] = dist.replicas
    return dist
distribute.create_distribution = recording_create

gap_call = keras.layers.GlobalAveragePooling2D.call
def recording_call(self, inputs):
    context = tf.distribute.get_replica_context()
    if context is not None:
        replica = tf.get_static_value(context.replica_id_in_sync_group)
        record["replica_ids"].append(int(replica) if replica is not None else -1)
        record["devices"].append(inputs.device)
    return gap_call(self, inputs)
keras.layers.GlobalAveragePooling2D.call = recording_call

from trainer.cli import main
raise SystemExit(main(argv))
"""


def _train_argv(data: Path, run_dir: Path, strategy: str, batch_size: int) -> list[str]:
    return ["train", "--data", str(data), "--run-dir", str(run_dir), "--backbone", "tiny", "--weights", "none",
            "--input-size", "64", "--epochs-stage1", "1", "--epochs-stage2", "1", "--batch-size", str(batch_size),
            "--val-fraction", "0.3", "--strategy", strategy, "--export", str(run_dir / "export")]


def _child(logical: int, record: Path, argv: list[str], log: Path, **env: str) -> subprocess.Popen:
    environ = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2", **env)
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, "-c", _CHILD, str(logical), str(record), *argv], stdout=handle,
                                stderr=subprocess.STDOUT, env=environ, cwd=REPO_ROOT)


def _wait(children: list[subprocess.Popen], logs: list[Path], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    try:
        for child, log in zip(children, logs):
            code = child.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert code == 0, f"{log.name} exited with {code}:\n{log.read_text()[-3000:]}"
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def _epochs(log_csv: Path) -> list[int]:
    lines = log_csv.read_text().splitlines()
    assert lines[0].startswith("epoch,")
    return [int(line.split(",")[0]) for line in lines[1:]]


def _assert_valid_export(export_dir: Path) -> None:
    from trainer.export import tflite_outputs

    card = mc.load_model_card(export_dir)
    mc.verify_artifacts(export_dir, card)
    out = tflite_outputs(export_dir / mc.TFLITE_FILENAME, np.full((2, 64, 64, 3), 100, np.float32))
    assert out[mc.OUTPUT_PROBABILITY].shape == (2, 1)
    assert np.isfinite(out[mc.OUTPUT_PROBABILITY]).all()


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# ------------------------------------------------------------------ the rules (no TensorFlow run)


def test_tf_config_roles() -> None:
    assert cluster_role({}) == ClusterRole("chief", 0, 1, True)
    workers = {"worker": ["a:1", "b:2", "c:3"]}

    def config(kind: str, index: int, cluster: dict = workers) -> dict[str, str]:
        return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}

    assert cluster_role(config("worker", 0)) == ClusterRole("worker", 0, 3, True)  # no chief: worker 0 is
    assert not cluster_role(config("worker", 2)).is_chief
    with_chief = {"chief": ["a:1"], "worker": ["b:2"]}
    assert cluster_role(config("chief", 0, with_chief)) == ClusterRole("chief", 0, 2, True)
    assert not cluster_role(config("worker", 0, with_chief)).is_chief
    with pytest.raises(ValueError, match="not in its cluster"):
        cluster_role(config("worker", 3))
    with pytest.raises(ValueError, match="TF_CONFIG"):
        cluster_role({"TF_CONFIG": "{not json"})


def test_batch_size_and_learning_rates_scale_with_replicas(tmp_path: Path) -> None:
    cfg = TrainConfig(data_root=tmp_path, run_dir=tmp_path, batch_size=16, lr_stage1=1e-3, lr_stage2=1e-4)
    assert scale_config(cfg, 1) is cfg
    four = scale_config(cfg, 4)
    assert (four.batch_size, four.lr_stage1, four.lr_stage2) == (64, pytest.approx(4e-3), pytest.approx(4e-4))
    assert (cfg.batch_size, cfg.lr_stage1) == (16, 1e-3)  # the caller's config is left as it was


# ------------------------------------------------------------------ mirrored: 2 logical CPUs


@pytest.mark.slow
def test_mirrored_on_two_logical_devices_trains_and_exports(tmp_path: Path, sample_paths) -> None:
    data = make_dataset_folder(tmp_path / "data", sample_paths, copies=2)  # 24 images: 17 train, 7 val
    run_dir = tmp_path / "run"
    record, log = tmp_path / "record.json", tmp_path / "mirrored.log"
    # 16 per replica x 2 replicas = a global batch of 32 > 17 training images: one step per stage
    _wait([_child(2, record, _train_argv(data, run_dir, "mirrored", 16), log)], [log])

    seen = json.loads(record.read_text())
    assert seen["replicas"] == 2
    assert {0, 1} <= set(seen["replica_ids"])  # the step was built for both replicas ...
    assert {d for d in seen["devices"] if d.endswith(("CPU:0", "CPU:1"))} >= {  # ... on both devices
        "/job:localhost/replica:0/task:0/device:CPU:0", "/job:localhost/replica:0/task:0/device:CPU:1"}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["batch_size"] == 32 and config["lr_stage1"] == pytest.approx(2e-3)
    assert _epochs(run_dir / "log_stage1.csv") == [0] and _epochs(run_dir / "log_stage2.csv") == [0]
    _assert_valid_export(run_dir / "export")


# ------------------------------------------------------------------ multiworker: 2 processes on localhost


@pytest.mark.slow
def test_multiworker_two_processes_chief_writes_and_a_killed_run_resumes(tmp_path: Path, sample_paths) -> None:
    data = make_dataset_folder(tmp_path / "data", sample_paths, copies=2)
    run_dir = tmp_path / "run"
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    scratch = [tmp_path / f"tmp{i}" for i in range(2)]
    for folder in scratch:
        folder.mkdir()

    def start(attempt: str) -> tuple[list[subprocess.Popen], list[Path]]:
        children, logs = [], []
        for i in range(2):
            log = tmp_path / f"{attempt}_worker{i}.log"
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            argv = _train_argv(data, run_dir, "multiworker", 8)
            children.append(_child(1, tmp_path / f"{attempt}_record{i}.json", argv, log, TF_CONFIG=tf_config,
                                   TMPDIR=str(scratch[i])))
            logs.append(log)
        return children, logs

    # First attempt: both workers killed once stage 1 is recorded as done.
    children, logs = start("first")
    state = run_dir / "state.json"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and not ("stage1" in state.read_text() if state.exists() else False):
            assert all(c.poll() is None for c in children), "a worker ended early:\n" + logs[0].read_text()[-3000:]
            time.sleep(0.2)
    finally:
        for child in children:
            child.send_signal(signal.SIGKILL)
            child.wait()
    assert "stage1" in json.loads(state.read_text())
    assert not (run_dir / "export").exists()

    # Second attempt resumes: every worker restores the chief's state (or the all-reduces would not match).
    left_by_kill = set(scratch[1].glob("pneumo-trainer-*"))  # SIGKILL leaves no time to clean up
    children, logs = start("second")
    _wait(children, logs)
    records = [json.loads((tmp_path / f"second_record{i}.json").read_text()) for i in range(2)]
    assert [r["replicas"] for r in records] == [2, 2]
    assert "stage 1 already done" in logs[0].read_text() and "stage 1 already done" in logs[1].read_text()

    # Only the chief wrote the run folder: one writer per log (two would duplicate every epoch's row) ...
    assert _epochs(run_dir / "log_stage1.csv") == [0]  # and stage 1 was not trained again
    assert _epochs(run_dir / "log_stage2.csv") == [0]
    saved = json.loads(state.read_text())
    assert saved["stage1"] and saved["stage2"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["batch_size"] == 16 and config["lr_stage2"] == pytest.approx(2e-4)  # 8 per replica x 2
    _assert_valid_export(run_dir / "export")
    assert (run_dir / "report" / "metrics.json").is_file() and (run_dir / "export" / "report").is_dir()
    # ... and the other worker wrote to a private folder that it removed.
    assert f"worker1 is not the chief: writing only to {scratch[1]}" in logs[1].read_text()
    assert set(scratch[1].glob("pneumo-trainer-*")) == left_by_kill  # (TensorFlow's own autograph files stay)


def test_tf_config_helper_for_slurm_and_kubernetes(capsys) -> None:
    from trainer.distribute import main

    assert main(["--index", "1", "--port", "2222", "node01", "node02"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config == {"cluster": {"worker": ["node01:2222", "node02:2222"]}, "task": {"type": "worker", "index": 1}}
    role = cluster_role({"TF_CONFIG": json.dumps(config)})
    assert (role.workers, role.is_chief) == (2, False)
    with pytest.raises(SystemExit):
        main(["--index", "2", "node01", "node02"])


def test_default_strategy_is_one_replica_and_leaves_the_config_alone(tmp_path: Path) -> None:
    from trainer.distribute import create_distribution, worker_view

    dist = create_distribution("default")
    assert dist.replicas == 1 and dist.is_chief
    cfg = TrainConfig(data_root=tmp_path, run_dir=tmp_path / "run")
    with worker_view(cfg, dist) as view:
        assert view is cfg
    with pytest.raises(ValueError, match="unknown strategy"):
        create_distribution("horovod")
