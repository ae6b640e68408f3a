"""GUI benchmark: launch latency and event-loop responsiveness during a batch.

Prints:
  1. time from launching a process to a visible main window, and to the first prediction on a
     sample, next to the time a process needs just to `import tensorflow` (which the app never does);
  2. the longest gap between ticks of a 10 ms heartbeat QTimer on the GUI thread while a batch of
     500 images is scored (target: < 50 ms), with the batch alone and while the user also steps
     through the list (each step decodes, explains and re-blends one image).

Runs under Xvfb with the xcb platform when Xvfb is installed (a real windowing path), else offscreen.

    .venv/bin/python bench/bench_gui.py [--model DIR] [--images 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from gui_harness import link_copies, pick_model, qt_wait, start_xvfb, stop_xvfb, wait_exposed  # noqa: E402

SAMPLES = REPO / "resources" / "samples"
SAMPLE = SAMPLES / "person1345_bacteria_3426.jpeg"
HEARTBEAT_MS = 10
STALL_TARGET_MS = 50.0


# ------------------------------------------------------------------------------ child: launch
def child_launch(model_dir: Path, sample: Path, settings_file: Path) -> int:
    """What run_gui does, with markers on stdout at the moments the parent times."""
    from PySide6.QtWidgets import QApplication

    from pneumo_desktop.gui.app import create_application
    from pneumo_desktop.gui.main_window import MainWindow
    from pneumo_desktop.gui.model_loading import default_model_loader
    from pneumo_desktop.gui.settings import SettingsStore, ini_qsettings

    app = create_application()
    window = MainWindow(model_loader=default_model_loader(model_dir),
                        settings=SettingsStore(ini_qsettings(settings_file)))
    window.show()
    wait_exposed(window)
    print("VISIBLE", flush=True)

    def done(_explanation: object) -> None:
        print("PREDICTION", flush=True)
        QApplication.quit()

    window.predictionShown.connect(done)
    window.fileFailed.connect(lambda _p, m: (print("FAILED", m, flush=True), QApplication.quit()))
    window.modelFailed.connect(lambda m: (print("FAILED", m, flush=True), QApplication.quit()))
    window.open_paths([sample])
    app.exec()
    return 0


def time_launch(model_dir: Path, scratch: Path) -> dict[str, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child-launch", "--model", str(model_dir),
         "--settings", str(scratch / "launch.ini")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    marks: dict[str, float] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        word = line.split()[0] if line.strip() else ""
        if word in ("VISIBLE", "PREDICTION"):
            marks[word] = time.perf_counter() - started
        elif word == "FAILED":
            raise SystemExit(f"launch failed: {line.strip()}")
    proc.wait(120)
    return marks


def time_import_tensorflow() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow"], check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - started


# ------------------------------------------------------------------------------ in-process: stalls
def measure_stalls(model_dir: Path, folder: Path, scratch: Path, navigate: bool) -> dict[str, float]:
    from PySide6.QtCore import QElapsedTimer, QEventLoop, Qt, QTimer
    from PySide6.QtTest import QTest

    from pneumo_desktop.core.runtime import PneumoniaModel
    from pneumo_desktop.gui.app import create_application
    from pneumo_desktop.gui.main_window import MainWindow
    from pneumo_desktop.gui.settings import SettingsStore, ini_qsettings

    create_application()
    settings = SettingsStore(ini_qsettings(scratch / f"stall_{navigate}.ini"))
    window = MainWindow(model=PneumoniaModel.load(model_dir), settings=settings)
    window.show()
    wait_exposed(window)
    window.open_paths([folder])
    qt_wait(1000)  # first image shown and explained before the clock starts

    clock = QElapsedTimer()
    gaps: list[float] = []
    gap_ends: list[float] = []  # clock time (ms) at which each gap ended, to tell where a stall happened
    last = [0.0]

    def tick() -> None:
        now = clock.nsecsElapsed() / 1e6
        gaps.append(now - last[0])
        gap_ends.append(now)
        last[0] = now

    heartbeat = QTimer()
    heartbeat.setTimerType(Qt.TimerType.PreciseTimer)
    heartbeat.setInterval(HEARTBEAT_MS)
    heartbeat.timeout.connect(tick)

    stepper = QTimer()
    stepper.setInterval(250)  # a user holding nothing down, just browsing while the batch runs
    stepper.timeout.connect(lambda: QTest.keyClick(window.file_list, Qt.Key.Key_Down))

    # Idle reference first: the machine may be busy with other work (e.g. training).
    clock.start()
    heartbeat.start()
    qt_wait(1000)
    idle = list(gaps)
    gaps.clear()
    gap_ends.clear()

    loop = QEventLoop()
    window.batchFinished.connect(loop.quit)
    window.batchFailed.connect(loop.quit)
    started = time.perf_counter()
    last[0] = batch_start_ms = clock.nsecsElapsed() / 1e6
    window.start_batch(folder, scratch / f"scores_{navigate}.csv")
    if navigate:
        window.file_list.setFocus()
        stepper.start()
    loop.exec()
    elapsed = time.perf_counter() - started
    heartbeat.stop()
    stepper.stop()
    window.close()
    gaps_sorted = sorted(gaps)
    p99 = gaps_sorted[int(0.99 * (len(gaps_sorted) - 1))] if gaps_sorted else float("nan")
    return {
        "batch_s": elapsed,
        "images_per_s": len(list(folder.iterdir())) / elapsed,
        "max_gap_ms": max(gaps) if gaps else float("nan"),
        "max_gap_at_s": (gap_ends[gaps.index(max(gaps))] - batch_start_ms) / 1000 if gaps else float("nan"),
        "p99_gap_ms": p99,
        "median_gap_ms": statistics.median(gaps) if gaps else float("nan"),
        "gaps_over_target": sum(g > STALL_TARGET_MS for g in gaps),
        "ticks": len(gaps),
        "idle_max_gap_ms": max(idle) if idle else float("nan"),
    }


# ------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder (default: bundled, else tiny test model)")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3, help="launch measurements (median reported)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--child-launch", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--settings", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_launch:
        return child_launch(args.model, SAMPLE, args.settings)

    xvfb = None
    if shutil.which("Xvfb"):
        xvfb = start_xvfb()
    elif not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    platform = os.environ.get("QT_QPA_PLATFORM", "xcb")
    scratch = Path(tempfile.mkdtemp(prefix="pneumo-bench-gui-"))
    try:
        model_dir, model_note = pick_model(args.model, scratch)
        print(f"model: {model_note}; Qt platform: {platform}; CPUs: {os.cpu_count()}; "
              f"load average: {os.getloadavg()[0]:.2f}")

        tf_times = [time_import_tensorflow() for _ in range(args.runs)]
        launches = [time_launch(model_dir, scratch) for _ in range(args.runs)]
        visible = statistics.median(m["VISIBLE"] for m in launches)
        first = statistics.median(m["PREDICTION"] for m in launches)
        tf = statistics.median(tf_times)
        print(f"\nLaunch (median of {args.runs}, from process start):")
        print(f"  visible main window        {visible:6.2f} s")
        print(f"  first prediction on sample {first:6.2f} s")
        print(f"  `import tensorflow` alone  {tf:6.2f} s   (the app never imports it)")

        folder = scratch / "batch"
        link_copies(sorted(SAMPLES.glob("*.jpeg")), folder, args.images)
        results = {}
        for navigate in (False, True):
            label = "batch + browsing the list every 250 ms" if navigate else "batch alone"
            r = measure_stalls(model_dir, folder, scratch, navigate)
            results["browsing" if navigate else "batch"] = r
            verdict = "OK" if r["max_gap_ms"] < STALL_TARGET_MS else "OVER TARGET"
            print(f"\nEvent loop during a {args.images}-image batch ({label}):")
            print(f"  batch time {r['batch_s']:.1f} s ({r['images_per_s']:.1f} images/s), {r['ticks']} heartbeats")
            print(f"  longest gap between {HEARTBEAT_MS} ms ticks: {r['max_gap_ms']:.1f} ms, ending "
                  f"{r['max_gap_at_s']:.2f} s into the batch  [{verdict}, target < {STALL_TARGET_MS:.0f} ms]")
            print(f"  p99 {r['p99_gap_ms']:.1f} ms, median {r['median_gap_ms']:.1f} ms, "
                  f"gaps over target: {r['gaps_over_target']}")
            print(f"  idle reference (no batch): longest gap {r['idle_max_gap_ms']:.1f} ms")
        if args.json:
            args.json.write_text(json.dumps({
                "model": model_note, "platform": platform, "launch_visible_s": visible,
                "launch_first_prediction_s": first,
                "import_tensorflow_s": tf, "stalls": results,
            }, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        stop_xvfb(xvfb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
