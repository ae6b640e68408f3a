"""The scoring log's cost: on the scoring thread (record() only queues), the writer's throughput, and a batch
scored with the log on and off (bundled model, the samples copied to N files), alternating runs.

    python bench/bench_scoring_log.py [--files 120] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pneumo_desktop.core import scoring_log
from pneumo_desktop.core.batch import score_paths
from pneumo_desktop.core.resources import samples_dir
from pneumo_desktop.core.runtime import PneumoniaModel


def entry(i: int) -> dict:
    return scoring_log.entry_fields(
        source="bench", path=Path(f"/bench/{i}.png"), file_sha256="ab" * 32, model_sha256="cd" * 32, threshold=0.5,
        threshold_source="card", probability=0.5, label="NORMAL", status="scored", refusal_reason=None,
        overridden=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--entries", type=int, default=5000)
    args, _ = parser.parse_known_args()
    work = Path(tempfile.mkdtemp(prefix="bench-log-"))
    try:
        target = scoring_log.ScoringLog(work / "log-unit")
        fields = [entry(i) for i in range(args.entries)]
        start = time.perf_counter()
        for f in fields:
            target.record(f)
        queued = time.perf_counter() - start
        target.flush(600)
        written = time.perf_counter() - start
        assert scoring_log.verify_log(work / "log-unit").ok
        print(f"record() on the scoring thread: {queued / args.entries * 1e6:.1f} us/entry; writer: "
              f"{args.entries / written:,.0f} lines/s ({written / args.entries * 1e3:.2f} ms/line incl. lock, "
              f"fsync every {scoring_log.FSYNC_EVERY})")

        images = [p for p in sorted(samples_dir().glob("*.jpeg"))]
        folder = work / "in"
        folder.mkdir()
        for i in range(args.files):
            shutil.copy(images[i % len(images)], folder / f"{i:04d}.jpeg")
        model = PneumoniaModel.load()
        times: dict[str, list[float]] = {"on": [], "off": []}
        os.environ[scoring_log.DATA_ENV] = str(work / "log-batch")
        os.environ[scoring_log.SWITCH_ENV] = "off"
        score_paths([folder], work / "warm-up.csv", model=model)  # caches, thread pools, the model's first runs
        for repeat in range(args.repeats):
            for mode in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
                os.environ[scoring_log.SWITCH_ENV] = mode
                start = time.perf_counter()
                score_paths([folder], work / f"r-{mode}.csv", model=model)
                if mode == "on":
                    scoring_log.default_log().flush(600)  # type: ignore[union-attr]
                times[mode].append(time.perf_counter() - start)
        on, off = statistics.median(times["on"]), statistics.median(times["off"])
        lines = scoring_log.verify_log(work / "log-batch")
        print(f"batch of {args.files} files, median of {args.repeats}: log off {off:.2f} s, log on {on:.2f} s "
              f"(including the final flush): {100 * (on - off) / off:+.1f}%; log verified: {lines.ok}, "
              f"{lines.lines} lines")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
