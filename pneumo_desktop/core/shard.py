"""Scoring one file set on several machines: a deterministic split (`score --shard K/N`) and the merge.

The split: each file goes to shard `1 + int(sha256(key)[:8]) mod N`, where the key is the file's path relative
to the input folder it was found in, prefixed by that folder's name (`archive/2020/x.png`; a file given by
itself is keyed by its name), with `/` separators and Unicode NFC. So the assignment depends on neither the
machine's mount point nor the order in which a file system lists the folder, and every node computes the
same N-way partition without talking to the others.

Each shard CSV gets a sidecar manifest `<csv>.shard.json` (written atomically before the first row) that
records the whole set (size and fingerprint), this shard's files with their positions in the full listing,
the model and the threshold. `merge_shards` uses it to refuse overlaps, gaps (files of the set in no shard
CSV, or shards not finished), shards of different sets, mixed models and mixed thresholds, and to put the
rows back into exactly the order a single `score` run writes them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from pneumo_desktop.core.batch import CSV_COLUMNS, OLDER_CSV_COLUMNS, _path_key, csv_path, unneutralise
from pneumo_desktop.core.imaging import find_images
from pneumo_desktop.core.report_files import write_durably

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".shard.json"
MANIFEST_FORMAT = "pneumo-desktop shard manifest 1"
_ENCODING = ("utf-8", "surrogateescape")  # as the results CSV: file names that are not UTF-8 round-trip


class ShardError(Exception):
    """A shard cannot be planned, resumed or merged; the message says which file and why."""


@dataclass(frozen=True)
class ShardSpec:
    index: int  # 1..count
    count: int

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """'K/N' with 1 <= K <= N (1-based, like GNU split's -n K/N)."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"expected K/N (e.g. 2/4), got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or not 1 <= index <= count:
            raise ValueError(f"K/N needs 1 <= K <= N, got {text!r}")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class ShardFile:
    position: int  # index in the full listing (the order one unsharded run writes its rows in)
    key: str  # machine-independent name used for the split
    csv_path: str  # the file as the results CSV names it


@dataclass(frozen=True)
class ShardPlan:
    spec: ShardSpec
    set_files: int
    set_sha256: str
    files: tuple[ShardFile, ...]

    @property
    def paths(self) -> list[Path]:
        return [Path(f.csv_path) for f in self.files]


@dataclass(frozen=True)
class MergeSummary:
    output: Path
    shards: int
    rows: int
    errors: int


# --------------------------------------------------------------------------- the split


def shard_key(path: Path, roots: Sequence[Path]) -> str:
    """`<folder name>/<path inside it>` for a file found under one of `roots`, else the file's name."""
    for root in roots:
        try:
            inside = PurePath(path).relative_to(root)
        except ValueError:
            continue
        name = Path(os.path.abspath(root)).name
        key = "/".join((name, *inside.parts))
        break
    else:
        key = PurePath(path).name
    return unicodedata.normalize("NFC", key)


def shard_of(key: str, count: int) -> int:
    """The 1-based shard of a key: stable across processes, machines and Python versions (no hash())."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return 1 + int.from_bytes(digest[:8], "big") % count


def set_fingerprint(keys: Iterable[str]) -> str:
    """sha256 of the sorted keys: equal on every node that sees the same files, whatever the listing order."""
    digest = hashlib.sha256()
    for key in sorted(keys):
        digest.update(key.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def plan_shard(inputs: Sequence[Path | str], recursive: bool, spec: ShardSpec) -> ShardPlan:
    """List the whole set exactly as `score` does and keep this shard's part (in the listing's order)."""
    listing = find_images(inputs, recursive)
    roots = [Path(p) for p in inputs if Path(p).is_dir()]
    keyed = [(position, shard_key(path, roots), csv_path(path)) for position, path in enumerate(listing)]
    mine = tuple(ShardFile(pos, key, text) for pos, key, text in keyed if shard_of(key, spec.count) == spec.index)
    return ShardPlan(spec, len(keyed), set_fingerprint(k for _, k, _ in keyed), mine)


def check_outputs_outside_inputs(inputs: Sequence[Path | str], outputs: Sequence[Path | str]) -> None:
    """Shards list their inputs independently: an output inside a scored folder would be one shard's input
    (another shard's CSV, manifest or heat maps) and make the sets differ. Refuse that up front."""
    folders = [os.path.realpath(p) for p in inputs if Path(p).is_dir()]
    for out in outputs:
        real = os.path.realpath(out)
        for folder in folders:
            try:
                inside = os.path.commonpath([real, folder]) == folder
            except ValueError:  # different drives (Windows): not inside
                inside = False
            if inside:
                raise ShardError(f"with --shard, write {out} outside the scored folder {folder} "
                                 "(the other shards would score it)")


# --------------------------------------------------------------------------- the manifest


def manifest_path(shard_csv: Path | str) -> Path:
    return Path(str(shard_csv) + MANIFEST_SUFFIX)


def write_manifest(shard_csv: Path | str, plan: ShardPlan, model_sha256: str, threshold: float, resume: bool) -> Path:
    """Write (atomically) the sidecar of a shard CSV. On --resume the shard and the set must be unchanged."""
    target = manifest_path(shard_csv)
    if resume and target.exists():
        old = read_manifest(target)
        if old["shard"] != [plan.spec.index, plan.spec.count]:
            raise ShardError(f"{shard_csv} holds shard {old['shard'][0]}/{old['shard'][1]}, not {plan.spec}")
        if old["set"] != {"files": plan.set_files, "sha256": plan.set_sha256}:
            raise ShardError(f"the file set changed since {shard_csv} was started ({old['set']['files']} files then, "
                             f"{plan.set_files} now): start every shard again with --overwrite")
        if old["model_sha256"] != model_sha256 or old["threshold"] != _threshold_text(threshold):
            raise ShardError(f"{shard_csv} was started with another model or threshold: use --overwrite")
    data = {
        "format": MANIFEST_FORMAT,
        "shard": [plan.spec.index, plan.spec.count],
        "set": {"files": plan.set_files, "sha256": plan.set_sha256},
        "model_sha256": model_sha256,
        "threshold": _threshold_text(threshold),
        "files": [[f.position, f.key, f.csv_path] for f in plan.files],
    }
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="ascii") as handle:  # json escapes non-ASCII and undecodable names
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


def read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="ascii"))
    except FileNotFoundError:
        raise ShardError(f"{path} is missing: only CSVs written by 'score --shard K/N' can be merged") from None
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path} is not readable: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ShardError(f"{path} is not a shard manifest of this program")
    return data


def _threshold_text(value: float | str) -> str:
    return format(float(value), ".6g")  # as the CSV's threshold cell


# --------------------------------------------------------------------------- the merge


@dataclass
class _Shard:
    csv: Path
    spec: ShardSpec
    manifest: dict
    rows: dict[str, list[str]]  # path key -> raw (still neutralised) cells


def _read_shard(shard_csv: Path) -> _Shard:
    manifest = read_manifest(manifest_path(shard_csv))
    index, count = manifest["shard"]
    spec = ShardSpec(index, count)
    try:
        data = shard_csv.read_bytes()
    except OSError as exc:
        raise ShardError(f"cannot read {shard_csv}: {exc.strerror or exc}") from None
    if data and not data.endswith(b"\n"):
        raise ShardError(f"shard {spec} ({shard_csv}) ends in a partial row: it was interrupted; "
                         "finish it with 'score ... --resume'")
    reader = csv.reader(io.StringIO(data.decode(*_ENCODING), newline=""))
    header = next(reader, None)
    if header is not None and tuple(header) in OLDER_CSV_COLUMNS:
        raise ShardError(f"{shard_csv} was written by an earlier version of this program (no level column): "
                         "score that shard again")
    if header is None or tuple(header) != CSV_COLUMNS:
        raise ShardError(f"{shard_csv} is not a results CSV of this program")
    rows: dict[str, list[str]] = {}
    for line, cells in enumerate(reader, start=2):
        if len(cells) != len(CSV_COLUMNS):
            raise ShardError(f"{shard_csv}, row {line}: {len(cells)} cells instead of {len(CSV_COLUMNS)}")
        key = _path_key(unneutralise(cells[0]))
        if key in rows:
            raise ShardError(f"{shard_csv} has two rows for {unneutralise(cells[0])}")
        rows[key] = cells
    return _Shard(shard_csv, spec, manifest, rows)


def merge_shards(output: Path | str, shard_csvs: Sequence[Path | str]) -> MergeSummary:
    """Join shard CSVs into `output` (written atomically), in the order one unsharded run writes its rows.

    Raises ShardError, writing nothing, on: a CSV without its manifest; shards of different sets or different
    counts N; a shard given twice or a file in two shards (overlap); a missing shard, an unfinished shard or a
    set that the manifests do not cover (gap); rows for files outside their shard; mixed models or thresholds.
    """
    output = Path(output)
    if not shard_csvs:
        raise ShardError("no shard CSVs given")
    shards = [_read_shard(Path(p)) for p in shard_csvs]
    first = shards[0]

    for shard in shards[1:]:
        if shard.spec.count != first.spec.count or shard.manifest["set"] != first.manifest["set"]:
            raise ShardError(f"{shard.csv} (shard {shard.spec}, {shard.manifest['set']['files']} files) and "
                             f"{first.csv} (shard {first.spec}, {first.manifest['set']['files']} files) "
                             "are shards of different file sets or splits")
    by_index: dict[int, _Shard] = {}
    for shard in shards:
        if shard.spec.index in by_index:
            raise ShardError(f"overlap: shard {shard.spec} given twice ({by_index[shard.spec.index].csv}, {shard.csv})")
        by_index[shard.spec.index] = shard
    missing = sorted(set(range(1, first.spec.count + 1)) - set(by_index))
    if missing:
        names = ", ".join(f"{k}/{first.spec.count}" for k in missing)
        raise ShardError(f"gap: shard(s) {names} missing; their files are in no CSV given")

    # The manifests together must be the set, each file once.
    owner: dict[str, _Shard] = {}
    positions: dict[str, int] = {}
    keys: list[str] = []
    for shard in shards:
        for position, key, text in shard.manifest["files"]:
            path_key = _path_key(text)
            if path_key in owner:
                raise ShardError(f"overlap: {text} is in shard {owner[path_key].spec} and shard {shard.spec}")
            owner[path_key] = shard
            positions[path_key] = position
            keys.append(key)
    expected = first.manifest["set"]
    if len(keys) != expected["files"] or set_fingerprint(keys) != expected["sha256"]:
        raise ShardError(f"gap: the shard manifests list {len(keys)} files, the set has {expected['files']} "
                         "(or other files): the shards were not planned from the same listing")

    # Every shard's rows are exactly its files.
    for shard in shards:
        stray = [cells[0] for key, cells in shard.rows.items() if owner.get(key) is not shard]
        if stray:
            raise ShardError(f"overlap: {shard.csv} (shard {shard.spec}) has {len(stray)} row(s) for files outside "
                             f"that shard, e.g. {unneutralise(stray[0])}")
        wanted = [text for _, _, text in shard.manifest["files"] if _path_key(text) not in shard.rows]
        if wanted:
            raise ShardError(f"gap: shard {shard.spec} ({shard.csv}) has no row for {len(wanted)} of its "
                             f"{len(shard.manifest['files'])} files, e.g. {wanted[0]}: finish it with "
                             "'score ... --resume'")

    models = {s.manifest["model_sha256"] for s in shards} | {c[4] for s in shards for c in s.rows.values()}
    if len(models) > 1:
        raise ShardError(f"mixed models: the shards were scored with {len(models)} different models "
                         f"({', '.join(sorted(m[:12] + '...' for m in models))})")
    thresholds = {s.manifest["threshold"] for s in shards} | {c[3] for s in shards for c in s.rows.values()}
    if len({_threshold_text(t) for t in thresholds}) > 1:
        raise ShardError(f"mixed thresholds: {', '.join(sorted(thresholds))}")

    merged = sorted(((positions[key], cells) for s in shards for key, cells in s.rows.items()), key=lambda r: r[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(cells for _, cells in merged)
    write_durably(output, buffer.getvalue().encode(*_ENCODING), output.with_name(f".{output.name}.{os.getpid()}.tmp"))
    errors = sum(1 for _, cells in merged if cells[6])
    log.info("merged %d shards into %s: %d rows", len(shards), output, len(merged))
    return MergeSummary(output=output, shards=len(shards), rows=len(merged), errors=errors)
