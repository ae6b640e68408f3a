"""Helpers shared by scripts/screenshots.py and bench/bench_gui.py: a virtual X display and a model.

Not part of the app: the tiny-model fallback imports the trainer (TensorFlow) in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "resources" / "model"

TINY_MODEL_CODE = """
import sys, numpy as np, keras
from pathlib import Path
from trainer.backbones import build_backbone
from trainer.card_builder import build_card
from trainer.export import export_model_folder
from trainer.model import build_classifier
keras.utils.set_random_seed(1234)
backbone, _ = build_backbone("tiny", 64, None)
model = build_classifier(backbone)
card = build_card(name="tiny-test-model", version="0.0.1", backbone="tiny", input_size=64, threshold=0.5,
                  threshold_rule="fixed 0.5 (test model)", gradcam_layer="backbone/top_activation")
calibration = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
export_model_folder(model, Path(sys.argv[1]), card, calibration)
"""


def start_xvfb(size: str = "1600x1000x24") -> subprocess.Popen | None:
    """Start Xvfb on a free display and point Qt at it (xcb). None when a display is already set."""
    if os.environ.get("DISPLAY") and os.environ.get("QT_QPA_PLATFORM", "xcb") == "xcb":
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise SystemExit("Xvfb not found: apt-get install xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 "
                         "libxkbcommon-x11-0")
    for number in range(90, 140):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break
    else:
        raise SystemExit("no free X display number")
    proc = subprocess.Popen([xvfb, f":{number}", "-screen", "0", size, "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if Path(f"/tmp/.X11-unix/X{number}").exists():
            break
        time.sleep(0.05)
    else:
        proc.terminate()
        raise SystemExit("Xvfb did not start")
    os.environ["DISPLAY"] = f":{number}"
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    return proc


def stop_xvfb(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        proc.terminate()
        proc.wait(10)


def pick_model(arg: Path | None, scratch: Path) -> tuple[Path, str]:
    """--model if given, else the bundled model, else a freshly built tiny test model."""
    if arg is not None:
        return arg, f"--model {arg}"
    if (BUNDLED / "model_card.json").is_file():
        return BUNDLED, "bundled model (resources/model)"
    tiny = scratch / "tiny_model"
    tiny.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", TINY_MODEL_CODE, str(tiny)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return tiny, "tiny test model (resources/model not exported yet)"


def link_copies(sources: list[Path], folder: Path, count: int) -> list[Path]:
    """`count` real files in `folder` cycling through `sources` (hard links when possible)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(count):
        source = sources[i % len(sources)]
        target = folder / f"{i:04d}_{source.name}"
        try:
            os.link(source, target)
        except OSError:
            shutil.copy(source, target)
        made.append(target)
    return made


# Waiting helpers. PySide6's QTest.qWait / qWaitForWindowExposed keep the GIL while they spin,
# which freezes every Python worker thread for the whole wait; a QEventLoop releases it.
def qt_wait(ms: int) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def qt_wait_signal(signal, timeout_ms: int) -> None:
    """Until `signal` fires (or `timeout_ms` passes), the event loop running."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def qt_wait_until(predicate, timeout_ms: int = 30_000, step_ms: int = 10) -> bool:
    deadline = time.monotonic() + timeout_ms / 1000
    while not predicate():
        if time.monotonic() > deadline:
            return False
        qt_wait(step_ms)
    return True


def wait_exposed(window, timeout_ms: int = 30_000) -> bool:
    return qt_wait_until(lambda: window.windowHandle() is not None and window.windowHandle().isExposed(), timeout_ms, 5)
