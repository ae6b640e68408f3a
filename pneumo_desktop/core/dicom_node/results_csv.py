"""The listener's results CSV: the `score` columns, plus the SOP Instance UID and the sender's AE title.

One row per instance, ever: the UIDs already in the file are read at start, and a row whose UID is there
(an instance scored again after a crash between its row and its `done` mark) is not written twice.
Each row is one os.write on an O_APPEND descriptor followed by an fsync: a kill leaves whole rows only.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
from pathlib import Path

from pneumo_desktop.core.batch import CSV_COLUMNS, BatchRow, csv_path, neutralise

log = logging.getLogger(__name__)

NODE_CSV_COLUMNS = (*CSV_COLUMNS, "sop_instance_uid", "sender_ae")


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def format_row(row: BatchRow, sop_instance_uid: str, sender_ae: str) -> str:
    """One CSV line, formatted like `pneumo-desktop score`'s rows (same cells, same number formats)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([
        neutralise(csv_path(row.path)),
        _number(row.probability, ".6f"),
        row.prediction,
        format(row.threshold, ".6g"),
        row.model_sha256,
        row.image_sha256,
        neutralise(" ".join(row.error.split())),
        row.status,
        _number(row.ood_score, ".6g"),
        _number(row.ood_limit, ".6g"),
        "true" if row.overridden else "false",
        neutralise(" ".join(row.refusal_reason.split())),
        _number(row.p_viral, ".6f"),
        row.subtype,
        neutralise(row.threshold_source),
        row.level,
        _number(row.raw_probability, ".6f"),
        sop_instance_uid,
        neutralise(" ".join(sender_ae.split())),
    ])
    return buffer.getvalue()


class NodeResultsCsv:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        if self.path.exists() and self.path.stat().st_size > 0:
            self._seen = self._read_uids()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if os.fstat(self._fd).st_size == 0:
            self._write(",".join(NODE_CSV_COLUMNS) + "\n")

    def _read_uids(self) -> set[str]:
        with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            data = handle.read()
        if not data.endswith("\n"):  # a row cut by a crash before this version's single writes: drop it
            data = data[: data.rfind("\n") + 1]
            with open(self.path, "r+b") as raw:
                raw.truncate(len(data.encode("utf-8", "surrogateescape")))
        reader = csv.reader(io.StringIO(data))
        header = next(reader, [])
        if tuple(header) != NODE_CSV_COLUMNS:
            raise ValueError(f"{self.path} is not a listener results CSV (its columns differ); choose another -o")
        return {cells[-2] for cells in reader if len(cells) == len(NODE_CSV_COLUMNS)}

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        while data:
            data = data[os.write(self._fd, data):]
        os.fsync(self._fd)

    def has(self, sop_instance_uid: str) -> bool:
        return sop_instance_uid in self._seen

    def append(self, row: BatchRow, sop_instance_uid: str, sender_ae: str) -> bool:
        """Write the row unless this UID has one; True when written."""
        return self.append_many([(row, sop_instance_uid, sender_ae)]) == 1

    def append_many(self, rows: list[tuple[BatchRow, str, str]]) -> int:
        """Write the rows whose UID has none yet, with one write and one fsync; returns how many were written."""
        with self._lock:
            text, written = [], set()
            for row, uid, sender_ae in rows:
                if uid in self._seen or uid in written:
                    log.info("%s already has a row for %s; not written again", self.path, uid)
                    continue
                text.append(format_row(row, uid, sender_ae))
                written.add(uid)
            if text:
                self._write("".join(text))
                self._seen |= written
            return len(written)

    def close(self) -> None:
        os.close(self._fd)
