"""GUI start-up from source: time from `python -m pneumo_desktop` to its main window being mapped (Xvfb), and to
the model loaded, for one or more source trees, alternating run by run so that background load hits each alike.

    python bench/bench_startup.py [TREE ...] [--runs 7] [--json OUT]

Each TREE is a folder holding a `pneumo_desktop` package (default: this checkout); e.g. an export of an older
commit (`git archive <commit> pneumo_desktop | tar -x -C /tmp/old`) to compare an import change with and without.
The packaged app is timed by bench/bench_package.py (same window detection and fresh settings folders); this one
isolates what the Python imports cost. Prints medians and each run, and the load average (a shared machine).
Needs Xvfb and xev (x11-utils).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_package import WINDOW_TARGET_S, MapWatcher, PollWatcher, XDisplay, gui_run

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", type=Path, nargs="*", help="source trees to compare (default: this checkout)")
    parser.add_argument("--runs", type=int, default=7, help="measured runs per tree (after one warm-up each)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    trees = [t.resolve() for t in args.trees] or [REPO]
    for tree in trees:
        if not (tree / "pneumo_desktop" / "__init__.py").is_file():
            print(f"bench_startup: {tree} holds no pneumo_desktop package", file=sys.stderr)
            return 2
    cmd = [sys.executable, "-m", "pneumo_desktop"]
    results: dict = {"load_average_before": os.getloadavg(), "cpus": os.cpu_count(), "trees": {}}
    window: dict[Path, list[float]] = {t: [] for t in trees}
    model: dict[Path, list[float]] = {t: [] for t in trees}
    display = XDisplay(None)
    try:
        watcher = MapWatcher(display.name) if shutil.which("xev") and shutil.which("xprop") else PollWatcher(
            display.name)
        try:
            with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
                for round_ in range(args.runs + 1):  # round 0: warm-up (page cache, .pyc files)
                    for tree in trees:
                        run = gui_run(cmd, display.name, watcher, Path(tmp), {"PYTHONPATH": str(tree)})
                        if run["window_s"] is None:
                            print(f"{tree}: no window appeared; log tail:\n{run['log_tail']}", file=sys.stderr)
                            return 1
                        if round_:
                            window[tree].append(run["window_s"])
                            if run["model_ready_s"] is not None:
                                model[tree].append(run["model_ready_s"])
        finally:
            watcher.close()
    finally:
        display.close()
    load_after = os.getloadavg()
    for tree in trees:
        shown, ready = window[tree], model[tree]
        results["trees"][str(tree)] = {"window_s": shown, "model_ready_s": ready,
                                       "window_median_s": statistics.median(shown),
                                       "model_ready_median_s": statistics.median(ready) if ready else None}
        runs = ", ".join(f"{t:.2f}" for t in shown)
        verdict = "met" if statistics.median(shown) <= WINDOW_TARGET_S else "MISSED"
        print(f"{tree}: visible window median {statistics.median(shown):.2f} s ({runs}) [target <= "
              f"{WINDOW_TARGET_S:.1f} s: {verdict}]; model loaded median "
              f"{statistics.median(ready) if ready else float('nan'):.2f} s")
    results["load_average_after"] = load_after
    print(f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in results['load_average_before'])}, "
          f"after {tuple(round(x, 2) for x in load_after)} on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
