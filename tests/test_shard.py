"""score --shard K/N and merge: the deterministic split, 4 shards as 4 processes == one run, every refusal,
and the commands the Kubernetes manifests run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pneumo_desktop import cli
from pneumo_desktop.core.shard import ShardSpec, manifest_path, plan_shard, shard_key, shard_of
from tests.conftest import REPO_ROOT
from tests.test_cli import read_rows


def make_archive(root: Path, sample_paths: list[Path], n: int = 22) -> Path:
    """A folder tree like an archive: images in sub-folders, one unreadable file (an error row)."""
    for i in range(n):
        src = sample_paths[i % len(sample_paths)]
        sub = root / f"20{20 + i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, sub / f"{i:03d}_{src.name}")
    (root / "2021" / "notes.txt").write_text("not an image")
    return root


def score(args: list[str]) -> int:
    return cli.main(["score", *args, "-q"])


# ------------------------------------------------------------------ the split


def test_shard_spec_parsing() -> None:
    assert ShardSpec.parse("2/4") == ShardSpec(2, 4) and str(ShardSpec.parse(" 1 / 1 ")) == "1/1"
    for bad in ("0/4", "5/4", "4", "a/b", "1/0", "-1/4"):
        with pytest.raises(ValueError):
            ShardSpec.parse(bad)


def test_split_is_a_partition_independent_of_mount_point_and_listing(tmp_path: Path, sample_paths) -> None:
    a = make_archive(tmp_path / "node_a" / "mnt" / "archive", sample_paths)
    b = Path(shutil.copytree(a, tmp_path / "node_b" / "archive"))  # the same tree mounted elsewhere
    plans_a = [plan_shard([a], True, ShardSpec(k, 4)) for k in range(1, 5)]
    plans_b = [plan_shard([b], True, ShardSpec(k, 4)) for k in range(1, 5)]
    for pa, pb in zip(plans_a, plans_b):
        assert [f.key for f in pa.files] == [f.key for f in pb.files]
        assert pa.set_sha256 == pb.set_sha256 and pa.set_files == pb.set_files == 23
    positions = sorted(f.position for p in plans_a for f in p.files)
    assert positions == list(range(23))  # every file in exactly one shard
    assert all(p.files for p in plans_a)  # 23 files over 4 shards: none empty with this hash
    # a file's shard depends on its own key only: listed alone, or with other inputs, it goes to the same shard
    one = a / "2021" / f"001_{sample_paths[1].name}"
    key = shard_key(one, [a])
    assert key == f"archive/2021/001_{sample_paths[1].name}"
    k = shard_of(key, 4)
    assert os.path.abspath(one) in [f.csv_path for f in plans_a[k - 1].files]
    with_others = plan_shard([b, a], True, ShardSpec(k, 4))
    assert os.path.abspath(one) in [f.csv_path for f in with_others.files]
    # files named one by one, in opposite orders: each shard gets the same files
    files = sorted(str(p) for p in a.rglob("*") if p.is_file())
    for k in range(1, 5):
        forward = {f.csv_path for f in plan_shard(files, False, ShardSpec(k, 4)).files}
        backward = {f.csv_path for f in plan_shard(files[::-1], False, ShardSpec(k, 4)).files}
        assert forward == backward
    # pinned: a changed hash would silently reshuffle the shards of runs already under way
    assert [shard_of(f"archive/{i}.png", 4) for i in range(8)] == [1, 1, 2, 1, 4, 4, 2, 1]


# ------------------------------------------------------------------ 4 processes == 1 run


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="the Slurm examples are bash scripts")
def test_four_shard_processes_merge_to_the_single_run_row_for_row(
    tiny_model_dir: Path, sample_paths, tmp_path: Path
) -> None:
    """The Slurm example itself, without Slurm: 4 array tasks as 4 concurrent local processes, then its merge."""
    archive = make_archive(tmp_path / "archive", sample_paths)
    single = tmp_path / "single.csv"
    assert score([str(archive), "--recursive", "-o", str(single), "--model", str(tiny_model_dir)]) == 0

    out = tmp_path / "scores"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PNEUMO_DESKTOP=f"{sys.executable} -m pneumo_desktop",
               SLURM_ARRAY_TASK_COUNT="4", SLURM_ARRAY_TASK_MIN="0")
    script = REPO_ROOT / "deploy" / "slurm" / "score_array.sbatch"
    children = [
        subprocess.Popen(["bash", str(script), str(archive), str(out), "--model", str(tiny_model_dir)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                         env=dict(env, SLURM_ARRAY_TASK_ID=str(task)))  # --array=0-3
        for task in range(4)
    ]
    results = [child.communicate(timeout=300) for child in children]
    for child, (_, err) in zip(children, results):
        assert child.returncode == 0, err
    sizes = [len(read_rows(out / f"part-{k}-of-4.csv")) for k in range(1, 5)]
    assert sum(sizes) == 23 and all(sizes)

    merge_script = REPO_ROOT / "deploy" / "slurm" / "merge.sbatch"
    done = subprocess.run(["bash", str(merge_script), str(out), "4"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    merged = out / "scores.csv"
    assert read_rows(merged) == read_rows(single)
    assert merged.read_bytes() == single.read_bytes()

    # merge by hand, shards in any order on the command line: the same file
    again = tmp_path / "again.csv"
    assert cli.main(["merge", str(again), *(str(out / f"part-{k}-of-4.csv") for k in (3, 1, 4, 2))]) == 0
    assert again.read_bytes() == single.read_bytes()


# ------------------------------------------------------------------ refusals


@pytest.fixture()
def shards(tiny_model_dir: Path, sample_paths, tmp_path: Path):
    """An archive scored as 3 shards (in-process), plus the arguments to score it again."""
    archive = make_archive(tmp_path / "archive", sample_paths, n=10)
    out = tmp_path / "out"
    out.mkdir()

    def args(k: int, *extra: str) -> list[str]:
        return [str(archive), "--recursive", "--shard", f"{k}/3", "-o", str(out / f"part{k}.csv"),
                "--model", str(tiny_model_dir), *extra]

    for k in (1, 2, 3):
        assert score(args(k)) == 0
    return archive, out, args


def merge(out: Path, *parts: int | str, capsys=None) -> tuple[int, str]:
    names = [str(out / f"part{p}.csv") if isinstance(p, int) else p for p in parts]
    code = cli.main(["merge", str(out / "merged.csv"), "--overwrite", *names])
    return code, capsys.readouterr().err if capsys else ""


def test_merge_refuses_gaps_and_overlaps(shards, capsys) -> None:
    _, out, args = shards
    assert merge(out, 1, 2, 3, capsys=capsys)[0] == 0
    assert len(read_rows(out / "merged.csv")) == 11

    code, err = merge(out, 1, 2, capsys=capsys)
    assert code == 1 and "gap: shard(s) 3/3 missing" in err
    code, err = merge(out, 1, 2, 2, 3, capsys=capsys)
    assert code == 1 and "overlap: shard 2/3 given twice" in err

    # a row of shard 1 copied into shard 2: a file scored twice
    first_row = (out / "part1.csv").read_text().splitlines()[1]
    with open(out / "part2.csv", "a", encoding="utf-8") as handle:
        handle.write(first_row + "\n")
    code, err = merge(out, 1, 2, 3, capsys=capsys)
    assert code == 1 and "overlap" in err and "outside that shard" in err
    assert score(args(2, "--overwrite")) == 0

    # an interrupted shard: rows missing, then a partial last row; --resume finishes it
    lines = (out / "part3.csv").read_text().splitlines(keepends=True)
    (out / "part3.csv").write_text("".join(lines[:-2]) + lines[-2][:10])
    code, err = merge(out, 1, 2, 3, capsys=capsys)
    assert code == 1 and "partial row" in err and "--resume" in err
    (out / "part3.csv").write_text("".join(lines[:-2]))
    code, err = merge(out, 1, 2, 3, capsys=capsys)
    assert code == 1 and "gap: shard 3/3" in err and "no row for 2 of" in err
    assert score(args(3, "--resume")) == 0
    assert merge(out, 1, 2, 3, capsys=capsys)[0] == 0
    assert len(read_rows(out / "merged.csv")) == 11

    # a CSV that is not a shard
    (out / "plain.csv").write_text((out / "part1.csv").read_text())
    code, err = merge(out, str(out / "plain.csv"), 2, 3, capsys=capsys)
    assert code == 1 and "plain.csv.shard.json is missing" in err


def test_merge_refuses_mixed_thresholds_models_and_sets(shards, sample_paths, capsys) -> None:
    archive, out, args = shards
    assert score(args(2, "--overwrite", "--threshold", "0.3")) == 0
    code, err = merge(out, 1, 2, 3, capsys=capsys)
    assert code == 1 and "mixed thresholds" in err
    assert score(args(2, "--overwrite")) == 0

    # shard 3 as if scored with another model (rows and manifest carry the model's sha256)
    text = (out / "part3.csv").read_text()
    sha = read_rows(out / "part3.csv")[0][4]
    (out / "part3.csv").write_text(text.replace(sha, "f" * 64))
    manifest = json.loads(manifest_path(out / "part3.csv").read_text())
    manifest["model_sha256"] = "f" * 64
    manifest_path(out / "part3.csv").write_text(json.dumps(manifest))
    code, err = merge(out, 1, 2, 3, capsys=capsys)
    assert code == 1 and "mixed models" in err

    # the archive grew after shards 1 and 2 were scored: shard 3 lists another set
    shutil.copy(sample_paths[0], archive / "2020" / "late_arrival.jpeg")
    assert score(args(3, "--overwrite")) == 0
    code, err = merge(out, 1, 2, 3, capsys=capsys)
    assert code == 1 and "different file sets" in err
    # and resuming a shard over a changed set is refused up front
    assert score(args(1, "--resume")) == 2
    assert "file set changed" in capsys.readouterr().err


def test_shard_usage_errors(tiny_model_dir: Path, sample_paths, tmp_path: Path, capsys) -> None:
    archive = make_archive(tmp_path / "archive", sample_paths, n=4)
    model = ["--model", str(tiny_model_dir)]
    assert score([str(archive), "--shard", "5/4", "-o", str(tmp_path / "p.csv"), *model]) == 2
    assert "--shard" in capsys.readouterr().err
    assert score([str(archive), "--recursive", "--shard", "1/2", "-o", str(archive / "p.csv"), *model]) == 2
    assert "outside the scored folder" in capsys.readouterr().err
    assert not (archive / "p.csv").exists()
    assert score([str(archive), "--shard", "1/2", "-o", str(tmp_path / "p.csv"), *model]) == 0
    assert score([str(archive), "--shard", "2/2", "-o", str(tmp_path / "p.csv"), "--resume", *model]) == 2
    assert "holds shard 1/2, not 2/2" in capsys.readouterr().err
    assert cli.main(["merge", str(tmp_path / "p.csv"), str(tmp_path / "p.csv")]) == 2
    assert cli.main(["merge", str(tmp_path / "m.csv"), str(tmp_path / "none.csv")]) == 2
    assert "not found" in capsys.readouterr().err


def _container_args(manifest: Path, kind: str = "Job") -> str:
    yaml = pytest.importorskip("yaml")
    job = next(d for d in yaml.safe_load_all(manifest.read_text()) if d["kind"] == kind)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    return container["args"][0]


def _run_container_shell(args: str, tmp_path: Path, env: dict[str, str]) -> list[str]:
    """Run a manifest's shell line with the commands it calls replaced by one that prints its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("pneumo-desktop", "pneumo-trainer"):
        stub = bin_dir / name
        stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\nprintf "TF_CONFIG=%s\\n" "$TF_CONFIG"\n')
        stub.chmod(0o755)
    python = bin_dir / "python"  # the manifests run `python -m trainer.distribute`
    if not python.exists():
        python.symlink_to(sys.executable)
    environ = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(REPO_ROOT), **env)
    done = subprocess.run(["/bin/sh", "-c", args], capture_output=True, text=True, env=environ, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.strip()]


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="POSIX shell")
def test_kubernetes_manifests_build_the_right_commands(tmp_path: Path) -> None:
    folder = REPO_ROOT / "deploy" / "kubernetes"
    printed = _run_container_shell(_container_args(folder / "score-indexed-job.yaml"), tmp_path,
                                   {"JOB_COMPLETION_INDEX": "2", "SHARDS": "8"})
    assert printed[:-1] == ["score", "/archive", "--recursive", "--shard", "3/8", "--resume", "-q",
                            "-o", "/results/part-3-of-8.csv"]
    printed = _run_container_shell(_container_args(folder / "merge-job.yaml"), tmp_path, {"SHARDS": "3"})
    assert printed[:-1] == ["merge", "--overwrite", "/results/scores.csv", "/results/part-1-of-3.csv",
                            "/results/part-2-of-3.csv", "/results/part-3-of-3.csv"]
    printed = _run_container_shell(_container_args(folder / "train-multiworker.yaml"), tmp_path,
                                   {"JOB_COMPLETION_INDEX": "1", "WORKERS": "2"})
    config = json.loads(printed[-1].split("=", 1)[1])
    assert config == {"cluster": {"worker": ["pneumo-train-0.pneumo-train:12345", "pneumo-train-1.pneumo-train:12345"]},
                      "task": {"type": "worker", "index": 1}}
    assert printed[printed.index("--strategy") + 1] == "multiworker"
