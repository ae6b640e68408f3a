"""The app runs without OpenCV: no app module imports it, and what replaced it draws and resizes as it did."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pneumo_desktop
from pneumo_desktop.core.overlay import COLORMAPS, colorize
from pneumo_desktop.core.preprocess import resize_grey
from pneumo_desktop.core.resize import resize_float

APP_ROOT = Path(pneumo_desktop.__file__).resolve().parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_app_module_imports_opencv() -> None:
    offenders = [str(p.relative_to(APP_ROOT)) for p in APP_ROOT.rglob("*.py") if "cv2" in _imported_modules(p)]
    assert offenders == []


def test_importing_every_app_module_leaves_opencv_unloaded() -> None:
    # A fresh interpreter: this test process may have cv2 loaded by trainer tests.
    code = (
        "import importlib, pkgutil, sys, pneumo_desktop\n"
        "for m in pkgutil.walk_packages(pneumo_desktop.__path__, 'pneumo_desktop.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('cv2' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_app_dependencies_do_not_name_opencv() -> None:
    text = (APP_ROOT.parent / "pyproject.toml").read_text(encoding="utf-8")
    dependencies = text.split("dependencies = [", 1)[1].split("\n]", 1)[0]
    assert "pillow" in dependencies  # the block was found
    assert "opencv" not in dependencies.lower()


cv2 = pytest.importorskip("cv2", reason="OpenCV (the trainer extra) is the reference for the old look")


@pytest.mark.parametrize("name", sorted(COLORMAPS))
def test_colormaps_look_as_opencv_drew_them(name: str) -> None:
    ramp = np.arange(256, dtype=np.uint8)[None, :]
    reference = cv2.cvtColor(cv2.applyColorMap(ramp, getattr(cv2, f"COLORMAP_{name.upper()}")), cv2.COLOR_BGR2RGB)
    difference = np.abs(colorize(ramp / 255.0, name).astype(int) - reference.astype(int))
    # OpenCV rounds the knees of "hot" (up to 5 levels over a few entries); the rest match to rounding.
    assert difference.max() <= 5
    assert difference.mean() < 0.5


def test_bilinear_map_upsampling_matches_opencv() -> None:
    rng = np.random.default_rng(3)
    small = rng.random((7, 7)).astype(np.float32)
    reference = cv2.resize(small, (300, 221), interpolation=cv2.INTER_LINEAR)
    assert np.abs(resize_float(small, 221, 300) - reference).max() < 1e-5


def test_box_resize_is_close_to_opencv_area_on_a_real_xray() -> None:
    from tests.imaging_helpers import sample_grey

    grey = sample_grey()
    ours = resize_grey(grey, 224).astype(int)
    reference = cv2.resize(grey, (224, 224), interpolation=cv2.INTER_AREA).astype(int)
    # Both average the source pixels each output pixel covers; they differ only in rounding at the seams.
    assert np.abs(ours - reference).mean() < 1.0
    assert np.abs(ours - reference).max() <= 24


def test_every_app_module_still_imports() -> None:
    for module in pkgutil.walk_packages(pneumo_desktop.__path__, "pneumo_desktop."):
        importlib.import_module(module.name)
