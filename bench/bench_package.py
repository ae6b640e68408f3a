"""Packaged-app benchmark: size of dist/pneumo-desktop and start-up times of its executable.

Prints:
  1. the size of the one-folder app (target <= 200 MB) by component (OpenCV, Qt and its ICU data,
     numpy's OpenBLAS, LiteRT, GDCM, Pillow, Python, resources, ...), next to a baseline: another
     build given with --baseline (e.g. one from an older commit), else the breakdown recorded for the
     build of main at 38e44a0 (issue 25: 353 MB, OpenCV 127 MB of it);
  2. the time from starting the frozen executable to its exit for `--version` (bare start-up) and
     `--self-test` (start-up + model checksum + 12 samples), target <= 3 s;
  3. the time from starting the frozen executable without arguments (the GUI) to its main window
     being mapped on an X server (Xvfb), target <= 1 s, and to the log line saying the model is
     loaded (the app is then ready for a first image);
  4. the same CLI timings for the one-file build when there is one (dist/pneumo-desktop-onefile).

Each timing is the median of --runs runs after one unmeasured warm-up run (page cache warm: the
usual case of a second start). With --drop-caches (Linux, root) it also measures cold starts: the
kernel page cache is dropped before each such run, as after a reboot. That slows every other process
on the machine for a moment, so it is opt-in.

The window is detected from X events (`xev -root -event substructure` reports each MapNotify as it
happens, no polling); without xev it polls `xdotool search` / `xwininfo` every 20 ms. Each run gets
a fresh HOME/XDG folders, so settings and logs of earlier runs (or of your own use) do not count.

    make package && .venv/bin/python bench/bench_package.py [--runs 5] [--drop-caches] [--baseline DIST]
        [--json out.json]
Needs: Xvfb and xev (x11-utils) or xdotool for the GUI part (apt-get install xvfb x11-utils xdotool);
without them the GUI part is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIST = REPO / "dist" / "pneumo-desktop"
APP = "pneumo-desktop"
WINDOW_TITLE = "Pneumo Desktop"
SIZE_TARGET_MB = 200.0  # decimal megabytes, as the issue states it
START_TARGET_S = 3.0  # CLI: --self-test
WINDOW_TARGET_S = 1.0  # GUI: start to a visible main window
GUI_TIMEOUT_S = 60.0
MODEL_READY = re.compile(r"loaded model ")


# ------------------------------------------------------------------------------------- helpers
def tree_size(folder: Path) -> int:
    """Bytes of the regular files under `folder` (symlinks count 0: they point inside the folder)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            if not path.is_symlink():
                total += path.stat().st_size
    return total


def largest_parts(folder: Path, count: int = 12) -> list[tuple[str, int]]:
    parts = []
    for child in folder.iterdir():
        if child.is_symlink():
            continue
        size = tree_size(child) if child.is_dir() else child.stat().st_size
        parts.append((child.name + ("/" if child.is_dir() else ""), size))
    return sorted(parts, key=lambda p: -p[1])[:count]


def mib(n: int) -> float:
    return n / (1024 * 1024)


def mb(n: int) -> float:
    return n / 1e6


# Components of _internal/, first match wins: (name, path prefixes). Sizes in the recorded baseline are
# the (MB): the one-folder build of main at 38e44a0, before OpenCV left the app.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("OpenCV (cv2 + its libs)", ("cv2/", "opencv_python_headless.libs/", "opencv_python.libs/")),
    ("Qt ICU data (libicudata)", ("PySide6/Qt/lib/libicudata",)),
    ("Qt + PySide6 (rest)", ("PySide6/", "shiboken6/")),
    ("numpy.libs (OpenBLAS)", ("numpy.libs/",)),
    ("numpy", ("numpy/",)),
    ("LiteRT", ("ai_edge_litert/",)),
    ("GDCM + CharLS", ("_gdcm/", "python_gdcm.libs/", "gdcm", "_CharLS", "jpeg_ls/")),
    ("Pillow", ("PIL/", "pillow.libs/")),
    ("resources (model, samples)", ("resources/",)),
    ("Python runtime", ("libpython", "python3", "base_library.zip", "lib-dynload/")),
)
OTHER = "other (system libraries, small modules, licences, executable)"
RECORDED_BASELINE_MB = {
    "total": 353.0, "OpenCV (cv2 + its libs)": 127.0, "Qt + PySide6 (all, with ICU)": 81.0,
    "numpy.libs (OpenBLAS)": 28.0, "resources (model, samples)": 24.0,
}


def components(dist: Path) -> dict[str, int]:
    """Bytes per component (COMPONENTS) of a one-folder app; files outside _internal/ count as other."""
    sizes = {name: 0 for name, _ in COMPONENTS}
    sizes[OTHER] = 0
    internal = dist / "_internal"
    for root, _dirs, files in os.walk(dist):
        for name in files:
            path = Path(root, name)
            if path.is_symlink():
                continue
            rel = path.relative_to(internal).as_posix() if path.is_relative_to(internal) else ""
            part = next((c for c, prefixes in COMPONENTS if rel and rel.startswith(prefixes)), OTHER)
            sizes[part] += path.stat().st_size
    return sizes


def print_components(after: dict[str, int], before: dict[str, int] | None) -> None:
    """A before/after table in MB; without a measured baseline, the recorded one (issue 25)."""
    print(f"  {'component':<64} {'before':>8} {'after':>8}  (MB)")
    for name in [c for c, _ in COMPONENTS] + [OTHER]:
        if before is not None:
            old = f"{mb(before[name]):8.1f}"
        else:
            old = f"{RECORDED_BASELINE_MB[name]:8.1f}" if name in RECORDED_BASELINE_MB else f"{'':>8}"
        print(f"  {name:<64} {old} {mb(after[name]):8.1f}")
    qt_after = after["Qt ICU data (libicudata)"] + after["Qt + PySide6 (rest)"]
    qt_before = (f"{mb(before['Qt ICU data (libicudata)'] + before['Qt + PySide6 (rest)']):8.1f}" if before
                 else f"{RECORDED_BASELINE_MB['Qt + PySide6 (all, with ICU)']:8.1f}")
    print(f"  {'  (Qt + PySide6 all, with ICU)':<64} {qt_before} {mb(qt_after):8.1f}")
    total_before = f"{mb(sum(before.values())):8.1f}" if before else f"{RECORDED_BASELINE_MB['total']:8.1f}"
    print(f"  {'total':<64} {total_before} {mb(sum(after.values())):8.1f}")


def fresh_env(scratch: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of one run: an empty home, so no earlier settings, logs or caches are used."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=scratch))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "XDG_", "PNEUMO_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        LANG=env.get("LANG", "C.UTF-8"),
    )
    env.update(extra or {})
    return env


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def summary(times: list[float]) -> dict[str, float | int]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
    }


def fmt(stats: dict | None) -> str:
    if not stats:
        return "n/a"
    return (f"median {stats['median_s']:.2f} s (min {stats['min_s']:.2f}, max {stats['max_s']:.2f}, "
            f"{stats['runs']} runs)")


def verdict(value: float, target: float) -> str:
    return "OK" if value <= target else "OVER TARGET"


# ------------------------------------------------------------------------------------- CLI timing
def time_command(cmd: list[str], scratch: Path) -> tuple[float, int, str]:
    env = fresh_env(scratch)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=scratch, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    return elapsed, proc.returncode, (proc.stdout + proc.stderr)


def cold_runs_of(measure, cold_runs: int, result: dict) -> list:
    """`measure()` after dropping the page cache each time; records why if that is not allowed."""
    cold = []
    for _ in range(cold_runs):
        if not drop_page_cache():
            result["cold_error"] = "cannot drop the page cache (needs root on Linux)"
            break
        cold.append(measure())
    return cold


def bench_cli(exe: Path, args: list[str], runs: int, cold_runs: int, scratch: Path) -> dict:
    cmd = [str(exe), *args]
    _, code, output = time_command(cmd, scratch)  # warm-up, also checks it works
    result: dict = {"command": " ".join([APP, *args]), "exit_code": code}
    if args == ["--self-test"]:
        last = [line for line in output.splitlines() if line.startswith("self-test")]
        result["self_test"] = last[-1] if last else output.strip().splitlines()[-1:]
    warm = [time_command(cmd, scratch)[0] for _ in range(runs)]
    result["warm"] = summary(warm)
    cold = cold_runs_of(lambda: time_command(cmd, scratch)[0], cold_runs, result)
    if cold:
        result["cold"] = summary(cold)
    return result


# ------------------------------------------------------------------------------------- GUI timing
class XDisplay:
    """An Xvfb server on a free display number (or the display already set, with --display)."""

    def __init__(self, display: str | None) -> None:
        self.proc: subprocess.Popen | None = None
        if display:
            self.name = display
            return
        xvfb = shutil.which("Xvfb")
        if xvfb is None:
            raise RuntimeError("Xvfb not found (apt-get install xvfb)")
        for number in range(150, 250):
            if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
                break
        else:
            raise RuntimeError("no free X display number")
        self.name = f":{number}"
        self.proc = subprocess.Popen(
            [xvfb, self.name, "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Xvfb did not start")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


def window_title(display: str, window_id: str) -> str:
    out = subprocess.run(["xprop", "-display", display, "-id", window_id, "WM_NAME", "_NET_WM_NAME"],
                         capture_output=True, text=True).stdout
    return " ".join(re.findall(r'"(.*)"', out))


class MapWatcher:
    """Reports when a top-level window titled WINDOW_TITLE is mapped, from X events (xev)."""

    def __init__(self, display: str) -> None:
        self.display = display
        cmd = ["xev", "-display", display, "-root", "-event", "substructure"]
        if shutil.which("stdbuf"):
            cmd = ["stdbuf", "-oL", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._lock = threading.Lock()
        self._mapped: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        time.sleep(0.3)  # let xev select its events before the first app starts

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("MapNotify"):
                stamp = time.perf_counter()
                window = next(self.proc.stdout, "")
                match = re.search(r"window (0x[0-9a-f]+)", window)
                if match:
                    with self._lock:
                        self._mapped.append((stamp, match.group(1)))

    def wait_for(self, since: float, timeout: float, alive: Callable[[], bool]) -> float | None:
        """perf_counter() of the first map of a WINDOW_TITLE window after `since`, or None."""
        checked: set[str] = set()
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline and alive():
            with self._lock:
                events = [(t, w) for t, w in self._mapped if t >= since and w not in checked]
            for stamp, window in events:
                checked.add(window)
                if WINDOW_TITLE in window_title(self.display, window):
                    return stamp
            time.sleep(0.005)
        return None

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class PollWatcher:
    """Fallback without xev: poll xdotool (or xwininfo) every 20 ms."""

    def __init__(self, display: str) -> None:
        self.display = display
        self.xdotool = shutil.which("xdotool")
        if not self.xdotool and not shutil.which("xwininfo"):
            raise RuntimeError("neither xev, xdotool nor xwininfo is installed (apt-get install x11-utils xdotool)")

    def _visible(self) -> bool:
        env = {**os.environ, "DISPLAY": self.display}
        if self.xdotool:
            return subprocess.run([self.xdotool, "search", "--onlyvisible", "--name", f"^{WINDOW_TITLE}$"], env=env,
                                  capture_output=True).returncode == 0
        tree = subprocess.run(["xwininfo", "-root", "-tree"], env=env, capture_output=True, text=True).stdout
        for window in re.findall(rf'(0x[0-9a-f]+) "{re.escape(WINDOW_TITLE)}"', tree):
            info = subprocess.run(["xwininfo", "-id", window], env=env, capture_output=True, text=True).stdout
            if "IsViewable" in info:
                return True
        return False

    def wait_for(self, since: float, timeout: float, alive: Callable[[], bool]) -> float | None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline and alive():
            if self._visible():
                return time.perf_counter()
            time.sleep(0.02)
        return None

    def close(self) -> None:
        pass


def gui_run(exe: Path | list[str], display: str, watcher, scratch: Path, extra_env: dict[str, str] | None = None
            ) -> dict:
    """One start of the app (the frozen executable, or a command such as python -m pneumo_desktop)."""
    env = fresh_env(scratch, {"DISPLAY": display, "QT_QPA_PLATFORM": "xcb", **(extra_env or {})})
    ready: dict[str, float] = {}
    lines: list[str] = []
    cmd = [str(exe)] if isinstance(exe, Path) else list(exe)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=scratch, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, bufsize=1)

    def read_log() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "model" not in ready and MODEL_READY.search(line):
                ready["model"] = time.perf_counter()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    shown = watcher.wait_for(start, GUI_TIMEOUT_S, lambda: proc.poll() is None)
    # give the model loader (a worker started after show()) a moment to report, then close the app
    deadline = time.perf_counter() + 15
    while shown is not None and "model" not in ready and proc.poll() is None and time.perf_counter() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(5)
    return {
        "window_s": None if shown is None else shown - start,
        "model_ready_s": ready["model"] - start if "model" in ready else None,
        "log_tail": "".join(lines[-5:]) if shown is None else "",
    }


def bench_gui(exe: Path, runs: int, cold_runs: int, scratch: Path, display_arg: str | None) -> dict:
    display = XDisplay(display_arg)
    try:
        has_xev = shutil.which("xev") and shutil.which("xprop")
        watcher = MapWatcher(display.name) if has_xev else PollWatcher(display.name)
        try:
            result: dict = {"detector": type(watcher).__name__, "display": display.name}
            first = gui_run(exe, display.name, watcher, scratch)  # warm-up
            if first["window_s"] is None:
                result["error"] = (f"no window appeared within {GUI_TIMEOUT_S:.0f} s; "
                                   f"last log lines:\n{first['log_tail']}")
                return result
            warm = [gui_run(exe, display.name, watcher, scratch) for _ in range(runs)]
            shown = [r["window_s"] for r in warm if r["window_s"] is not None]
            if not shown:
                result["error"] = f"no window appeared within {GUI_TIMEOUT_S:.0f} s in the measured runs"
                return result
            result["warm"] = summary(shown)
            model = [r["model_ready_s"] for r in warm if r["model_ready_s"] is not None]
            if model:
                result["warm_model_ready"] = summary(model)
            cold = cold_runs_of(lambda: gui_run(exe, display.name, watcher, scratch), cold_runs, result)
            if any(r["window_s"] is not None for r in cold):
                result["cold"] = summary([r["window_s"] for r in cold if r["window_s"] is not None])
                cold_model = [r["model_ready_s"] for r in cold if r["model_ready_s"] is not None]
                if cold_model:
                    result["cold_model_ready"] = summary(cold_model)
            return result
        finally:
            watcher.close()
    finally:
        display.close()


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=DEFAULT_DIST,
                        help="the one-folder app (default: dist/pneumo-desktop)")
    parser.add_argument("--onefile", type=Path, default=None,
                        help="one-file executable to time as well (default: dist/pneumo-desktop-onefile if present)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another one-folder build to compare sizes with (e.g. built from an older commit)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per timing (median reported)")
    parser.add_argument("--drop-caches", action="store_true", help="also time cold starts (drops the page cache; root)")
    parser.add_argument("--cold-runs", type=int, default=3, help="cold runs per timing with --drop-caches")
    parser.add_argument("--no-gui", action="store_true", help="skip the GUI start-up timing")
    parser.add_argument("--display", default=None, help="use this X display instead of starting Xvfb")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    # `make bench` passes its extra arguments to every bench: ignore the ones meant for others.
    args, _unknown = parser.parse_known_args(argv)

    exe = args.dist / APP
    if not exe.is_file():
        print(f"SKIPPED: {exe} does not exist; build it first with `make package`.")
        return 1 if args.strict else 0
    cold_runs = args.cold_runs if args.drop_caches else 0
    onefile = args.onefile or (args.dist.parent / f"{APP}-onefile")
    report: dict = {"dist": str(args.dist), "machine": f"{os.cpu_count()} CPUs", "targets": {
        "size_mb": SIZE_TARGET_MB, "start_s": START_TARGET_S, "window_s": WINDOW_TARGET_S}}
    problems: list[str] = []

    size = tree_size(args.dist)
    report["size_mb"] = round(mb(size), 1)
    report["size_mib"] = round(mib(size), 1)
    report["largest"] = {name: round(mib(n), 1) for name, n in largest_parts(args.dist / "_internal")}
    print(f"one-folder app {args.dist}: {mb(size):.1f} MB ({mib(size):.1f} MiB)  "
          f"[{verdict(mb(size), SIZE_TARGET_MB)}, target <= {SIZE_TARGET_MB:.0f} MB]")
    after = components(args.dist)
    before = components(args.baseline) if args.baseline and (args.baseline / "_internal").is_dir() else None
    report["components_mb"] = {k: round(mb(v), 1) for k, v in after.items()}
    if before is not None:
        report["baseline"] = str(args.baseline)
        report["baseline_components_mb"] = {k: round(mb(v), 1) for k, v in before.items()}
    print("size by component, before = " + (f"the build in {args.baseline}" if before is not None else
          "the build of main at 38e44a0 as recorded in issue 25 (pass --baseline DIST to measure one)") + ":")
    print_components(after, before)
    largest = ", ".join(f"{k} {v:.1f}" for k, v in report["largest"].items())
    print(f"  largest parts of _internal/: {largest} (MiB)")
    cv2_files = sorted(str(p.relative_to(args.dist)) for p in args.dist.rglob("*")
                       if p.name.startswith(("cv2", "libopencv")) or p.name.startswith("opencv"))
    report["opencv_files"] = len(cv2_files)
    shown = f" ({', '.join(cv2_files[:3])} ...)" if cv2_files else ""
    print(f"  OpenCV files in the package: {len(cv2_files)}{shown}")
    if mb(size) > SIZE_TARGET_MB:
        problems.append("size")

    with tempfile.TemporaryDirectory(prefix="bench-package-") as tmp:
        scratch = Path(tmp)
        for key, cli_args in (("version", ["--version"]), ("self_test", ["--self-test"])):
            res = bench_cli(exe, cli_args, args.runs, cold_runs, scratch)
            report[key] = res
            line = f"{res['command']}: warm {fmt(res['warm'])}"
            if "cold" in res:
                line += f"; cold {fmt(res['cold'])}"
            print(line + f"  [exit code {res['exit_code']}]")
            if key == "self_test":
                print(f"  {res.get('self_test')}")
                worst = res.get("cold", res["warm"])["median_s"]
                print(f"  [{verdict(worst, START_TARGET_S)}, target <= {START_TARGET_S:.0f} s]")
                if worst > START_TARGET_S:
                    problems.append("self-test start")
            if res.get("cold_error"):
                print(f"  cold runs skipped: {res['cold_error']}")

        if onefile.is_file():
            for key, cli_args in (("onefile_version", ["--version"]), ("onefile_self_test", ["--self-test"])):
                res = bench_cli(onefile, cli_args, args.runs, cold_runs, scratch)
                report[key] = res
                line = f"one-file {res['command']}: warm {fmt(res['warm'])}"
                if "cold" in res:
                    line += f"; cold {fmt(res['cold'])}"
                print(line + f"  [exit code {res['exit_code']}]")

        if args.no_gui:
            print("GUI start-up: skipped (--no-gui)")
        else:
            try:
                res = bench_gui(exe, args.runs, cold_runs, scratch, args.display)
            except RuntimeError as exc:
                res = {"error": str(exc)}
            report["gui"] = res
            if "error" in res:
                print(f"GUI start-up: FAILED: {res['error']}")
                problems.append("gui")
            else:
                line = f"GUI start to visible main window (Xvfb, {res['detector']}): warm {fmt(res['warm'])}"
                if "cold" in res:
                    line += f"; cold {fmt(res['cold'])}"
                print(line)
                if "warm_model_ready" in res:
                    line = f"  ... to model loaded (ready for a first image): warm {fmt(res['warm_model_ready'])}"
                    if "cold_model_ready" in res:
                        line += f"; cold {fmt(res['cold_model_ready'])}"
                    print(line)
                worst = res.get("cold", res["warm"])["median_s"]
                print(f"  [{verdict(worst, WINDOW_TARGET_S)}, target <= {WINDOW_TARGET_S:.1f} s]")
                if worst > WINDOW_TARGET_S:
                    problems.append("gui start")
                if res.get("cold_error"):
                    print(f"  cold runs skipped: {res['cold_error']}")

    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if problems:
        print("targets missed: " + ", ".join(problems))
        return 1 if args.strict or "gui" in problems else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
