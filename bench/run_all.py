"""Run every bench/bench_*.py in turn (what `make bench` does). Extra arguments go to every bench."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    benches = sorted(Path(__file__).resolve().parent.glob("bench_*.py"))
    failed = []
    for bench in benches:
        print(f"=== {bench.name}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(bench), *extra])
        print(f"=== {bench.name}: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
        if code != 0:
            failed.append(bench.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
