"""The project's error tree: every error we raise on purpose is a `PneumoError`.

`reason` is one sentence for a person (the GUI shows it, the CLIs print it on one line); the message
(`str(exc)`) may add context such as the file name. Anything that is not a PneumoError is a bug and keeps
its traceback (in the log, never in front of a user). docs/ARCHITECTURE.md has the same tree, with what each
means; tests/test_docs.py keeps both in line with the classes.

    PneumoError
      ImageLoadError            core.image_types, per file:
        UnsupportedFormatError, EmptyFileError, CorruptImageError, ImageTooLargeError, DicomDecodeError,
        UnsupportedEncodingError, ImplausibleGeometryError
      ModelIntegrityError       core.model_card
      ResultsFileError          core.batch
      OutputError               core.batch (the results cannot be written)
      OutputLockedError         core.batch (another run writes the same CSV)
      ExportError               gui.report
      UsageError                cli.common (pneumo-desktop's bad arguments)
      DatasetError              trainer.data
      TorchFileError            trainer.torch_legacy (also a ValueError)
      CalibrationError          core.calibration
      AuditCancelledError       core.explanation_audit
      RandomisationError        core.model_randomisation
      NodeConfigError           core.dicom_node.config
      SpoolFullError            core.dicom_node.spool
      SpoolLockedError          core.dicom_node.spool
      ResultBuildError          core.dicom_node.results_dicom
      NotSendableError          gui.pacs_actions
"""

from __future__ import annotations


class PneumoError(Exception):
    """Root of the project's errors; `reason` is a sentence for a person (defaults to the message)."""

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message
