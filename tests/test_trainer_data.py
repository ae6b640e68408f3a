"""Trainer data handling: patient ids, grouped split, class weights, integrity checks on planted bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.data import Sample, list_split, patient_id, prepare_split
from trainer.split import class_weights, grouped_split


@pytest.mark.parametrize(
    "name, expected",
    [
        ("person1139_virus_1882.jpeg", "PERSON1139"),
        ("person373_bacteria_1708.jpeg", "PERSON373"),
        ("IM-0265-0001.jpeg", "IM-0265"),
        ("NORMAL2-IM-0588-0001.jpeg", "NORMAL2-IM-0588"),
        ("odd-name.png", "ODD-NAME"),
    ],
)
def test_patient_id(name, expected):
    assert patient_id(name) == expected


def _synthetic_samples(n_patients: int = 60) -> list[Sample]:
    rng = np.random.default_rng(3)
    samples = []
    for i in range(n_patients):
        label = int(i % 3 != 0)
        for j in range(int(rng.integers(1, 5))):
            name = f"person{i}_bacteria_{j}.jpeg" if label else f"IM-{i:04d}-{j:04d}.jpeg"
            samples.append(Sample(Path(name), label, patient_id(name)))
    return samples


def test_grouped_split_keeps_each_patient_on_one_side_and_is_reproducible():
    samples = _synthetic_samples()
    train, val = grouped_split(samples, 0.2, seed=7)
    assert sorted(train + val) == list(range(len(samples)))
    train_patients = {samples[i].patient for i in train}
    val_patients = {samples[i].patient for i in val}
    assert train_patients.isdisjoint(val_patients)
    for label in (0, 1):  # each class is represented near the requested share
        n = sum(s.label == label for s in samples)
        n_val = sum(samples[i].label == label for i in val)
        assert 0.2 * n <= n_val <= 0.2 * n + 4
    assert grouped_split(samples, 0.2, seed=7) == (train, val)
    assert grouped_split(samples, 0.2, seed=8) != (train, val)


def test_grouped_split_on_the_real_file_names(dataset_dir):
    samples = list_split(dataset_dir, "train")
    train, val = grouped_split(samples, 0.15, seed=42)
    assert {samples[i].patient for i in train}.isdisjoint({samples[i].patient for i in val})
    assert 0.14 < len(val) / len(samples) < 0.17


def test_class_weights_balance_the_loss():
    labels = np.array([0] * 25 + [1] * 75)
    weights = class_weights(labels)
    assert weights[0] * 25 == pytest.approx(weights[1] * 75)
    assert weights[0] * 25 + weights[1] * 75 == pytest.approx(100)
    with pytest.raises(ValueError, match="both classes"):
        class_weights(np.ones(5, dtype=int))


def make_dataset_folder(root: Path, sample_paths: list[Path], copies: int, size: int = 160) -> Path:
    """ROOT/train/{NORMAL,PNEUMONIA} from the real samples (downscaled), several 'patients' per source image."""
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
    for k, src in enumerate(sample_paths):
        grey = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
        assert grey is not None, src
        small = cv2.resize(grey, (size, int(size * grey.shape[0] / grey.shape[1])), interpolation=cv2.INTER_AREA)
        pneumonia = src.name.startswith("person")
        for c in range(copies):
            shifted = np.roll(small, c, axis=1)
            if pneumonia:
                name = f"person{k * 100 + c}_{'virus' if k % 2 else 'bacteria'}_{c}.jpeg"
                cv2.imwrite(str(root / "train" / "PNEUMONIA" / name), shifted)
            else:
                name = f"IM-{k * 100 + c:04d}-0001.jpeg"
                cv2.imwrite(str(root / "train" / "NORMAL" / name), shifted)
    return root


def test_integrity_pass_excludes_planted_bad_files_and_says_why(tmp_path, sample_paths):
    root = make_dataset_folder(tmp_path / "data", sample_paths, copies=1)
    normal = root / "train" / "NORMAL"
    (normal / "IM-9000-0001.jpeg").write_bytes(b"")
    good = next((root / "train" / "PNEUMONIA").iterdir()).read_bytes()
    (normal / "IM-9001-0001.jpeg").write_bytes(good[: len(good) // 3])
    (normal / "IM-9002-0001.jpeg").write_text("this is not an image\n")
    cv2.imwrite(str(normal / "IM-9003-0001.png"), np.full((20, 20), 128, np.uint8))
    cv2.imwrite(str(normal / "IM-9004-0001.png"), np.full((200, 200), 128, np.uint8))
    samples = list_split(root, "train")
    prepared = prepare_split(samples, 64)
    rejected = {r.path.name: r.reason for r in prepared.rejected}
    assert set(rejected) == {"IM-9000-0001.jpeg", "IM-9001-0001.jpeg", "IM-9002-0001.jpeg",
                             "IM-9003-0001.png", "IM-9004-0001.png"}
    assert "empty" in rejected["IM-9000-0001.jpeg"].lower()
    assert "small" in rejected["IM-9003-0001.png"]
    assert "blank" in rejected["IM-9004-0001.png"]
    assert len(prepared.samples) == len(sample_paths)
    assert prepared.images.shape == (len(sample_paths), 64, 64) and prepared.images.dtype == np.uint8


def test_check_data_command_writes_the_report(tmp_path, sample_paths):
    from trainer.cli import main

    root = make_dataset_folder(tmp_path / "data", sample_paths[:4], copies=1)
    (root / "train" / "NORMAL" / "IM-9000-0001.jpeg").write_bytes(b"\x00" * 10)
    report = tmp_path / "report.csv"
    assert main(["check-data", "--data", str(root), "--report", str(report)]) == 0
    lines = report.read_text().splitlines()
    assert lines[0] == "file,reason" and len(lines) == 2 and "IM-9000-0001.jpeg" in lines[1]


def test_missing_dataset_is_a_clear_error(tmp_path):
    from trainer.data import DatasetError

    with pytest.raises(DatasetError, match="does not exist"):
        list_split(tmp_path, "train")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_check_data_on_a_missing_folder_is_one_line_and_status_2(tmp_path, capsys):
    from trainer.cli import main

    assert main(["check-data", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    missing = tmp_path / "nowhere" / "train"
    assert err.strip().splitlines() == [
        f"pneumo-trainer: error: {missing} does not exist (expected ROOT/train/{{NORMAL,PNEUMONIA}}/)"
    ]
