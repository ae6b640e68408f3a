"""`pneumo-desktop log show [--since DATE]` and `pneumo-desktop log verify`: the scoring log (core.scoring_log).

Exit codes: 0 done (verify: the log checks); 1 verify found an edited, removed or moved line (named on stderr);
2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from pneumo_desktop.core import scoring_log

PROG = "pneumo-desktop log"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The scoring log: one line for every result the app showed or wrote, chained by hashes "
        f"(in {scoring_log.log_dir()}).",
    )
    parser.add_argument("--dir", type=Path, default=None, help="the log's folder (default: the user's data folder)")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the entries (oldest first)")
    show.add_argument("--since", type=_date, default=None, help="only entries at or after DATE (YYYY-MM-DD[THH:MM])")
    show.add_argument("--json", action="store_true", help="print the raw JSON lines")
    sub.add_parser("verify", help="check that no line was edited, removed, added or moved")
    return parser


def _date(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def run(argv: Sequence[str]) -> int:
    try:
        parsed = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    folder = parsed.dir or scoring_log.log_dir()
    if parsed.command == "verify":
        check = scoring_log.verify_log(folder)
        if check.ok:
            print(f"scoring log verified: {check.lines} lines, chain intact ({folder})")
            return 0
        print(f"{PROG}: verify FAILED: {check.problem}", file=sys.stderr)
        return 1
    shown = 0
    for entry in scoring_log.read_entries(folder, since=parsed.since):
        shown += 1
        if parsed.json:
            print(json.dumps(entry, ensure_ascii=False))
            continue
        if entry.get("status") == "scored":
            result = f"{entry.get('label')} p={float(entry.get('probability') or 0):.4f}"
        else:
            result = f"{str(entry.get('status')).upper()} ({entry.get('refusal_reason') or ''})"
        level = f" level={entry['level']}" if "level" in entry else ""
        override = " overridden" if entry.get("overridden") else ""
        print(f"{entry.get('time')}  {entry.get('user')}@{entry.get('host')}  {entry.get('source'):14s}  {result}"
              f"{level}{override}  threshold {entry.get('threshold')} ({entry.get('threshold_source')})  "
              f"model {str(entry.get('model_sha256'))[:12]}  {entry.get('file')}")
    if not shown:
        print(f"no entries{' since ' + parsed.since.isoformat() if parsed.since else ''} in {folder}", file=sys.stderr)
    return 0
