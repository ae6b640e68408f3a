"""The error tree: one root (PneumoError), and every error a person sees is one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo_desktop.cli import common, dispatch
from pneumo_desktop.core.batch import ResultsFileError
from pneumo_desktop.core.errors import PneumoError
from pneumo_desktop.core.imaging import CorruptImageError, DicomDecodeError, ImageLoadError, load_image
from pneumo_desktop.core.model_card import ModelIntegrityError


def test_every_typed_family_is_a_pneumo_error() -> None:
    from trainer.data import DatasetError
    from trainer.torch_legacy import TorchFileError

    for family in (ImageLoadError, DicomDecodeError, ModelIntegrityError, ResultsFileError, common.UsageError,
                   DatasetError, TorchFileError):
        assert issubclass(family, PneumoError), family
    assert issubclass(TorchFileError, ValueError)  # callers that catch ValueError keep working


def test_reason_is_the_sentence_and_the_message_adds_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ImageLoadError) as caught:
        load_image(bad)
    assert caught.value.reason and str(caught.value) == f"{bad}: {caught.value.reason}"
    plain = ModelIntegrityError("model.tflite is missing")
    assert plain.reason == str(plain) == "model.tflite is missing"


def test_describe_error_needs_no_attribute_probing() -> None:
    pytest.importorskip("PySide6")
    from pneumo_desktop.gui.error_text import describe_error

    assert describe_error(CorruptImageError("/x/a.png", "the file is truncated")) == "the file is truncated"
    assert describe_error(ValueError("plain message")) == "plain message"
    assert describe_error(RuntimeError()) == "RuntimeError"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (common.UsageError("bad option"), common.EXIT_USAGE),
        (ResultsFileError("r.csv is not a results file"), common.EXIT_USAGE),
        (ModelIntegrityError("model.tflite does not match its card"), common.EXIT_MODEL),
        (CorruptImageError("a.png", "truncated"), common.EXIT_FAILED),
        (OSError(28, "No space left on device"), common.EXIT_FAILED),
        (KeyError("a bug"), common.EXIT_FAILED),
        (KeyboardInterrupt(), common.EXIT_INTERRUPTED),
    ],
)
def test_every_cli_error_is_one_line_and_a_status(monkeypatch, capsys, error: BaseException, status: int) -> None:
    def fail(args: list[str]) -> int:
        raise error

    monkeypatch.setattr(dispatch, "run_command", fail)
    assert dispatch.main(["score", "x", "-o", "y.csv"]) == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.strip().startswith("pneumo-desktop: ")
