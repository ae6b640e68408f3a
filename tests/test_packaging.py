"""Static checks of the packaging files (the frozen build itself is checked by .ci/package_smoke.sh)."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]


def test_spec_is_valid_python_and_bundles_what_resources_py_looks_for():
    source = (REPO / "pyinstaller.spec").read_text(encoding="utf-8")
    ast.parse(source)
    # core/resources.py finds everything under sys._MEIPASS/resources/<name> (the model folder's destination
    # and its files are build_helpers.model_datas', tested in test_build_helpers.py)
    for dest in ("resources/samples", "resources/icons"):
        assert f'"{dest}"' in source
    assert "bh.model_datas(MODEL_DIR)" in source


def test_frozen_resources_dir_is_under_meipass(monkeypatch, tmp_path):
    from pneumo_desktop.core import resources

    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert resources.bundled_model_dir() == tmp_path / "resources" / "model"
    assert resources.samples_dir() == tmp_path / "resources" / "samples"


def test_launcher_calls_the_console_script_entry_point():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["pneumo-desktop"] == "pneumo_desktop.cli:main"
    launcher = (REPO / "packaging" / "launcher.py").read_text(encoding="utf-8")
    assert "from pneumo_desktop.cli import main" in launcher
    assert launcher.index("freeze_support()") < launcher.index("from pneumo_desktop.cli import main")


def test_notices_cover_every_runtime_dependency():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    notices = (REPO / "THIRD_PARTY_NOTICES.md").read_text(encoding="utf-8").lower()
    names = {"pyside6-essentials": "pyside6", "opencv-python-headless": "opencv", "ai-edge-litert": "litert"}
    for requirement in pyproject["project"]["dependencies"]:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
        assert names.get(name, name) in notices, f"{name} is not in THIRD_PARTY_NOTICES.md"
    assert (REPO / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")


def test_desktop_entry():
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(REPO / "resources" / "linux" / "pneumo-desktop.desktop", encoding="utf-8")
    section = entry["Desktop Entry"]
    assert section["Type"] == "Application"
    assert section["Exec"].split()[0] == "pneumo-desktop"
    assert section["Icon"] == "pneumo-desktop"  # the name install-desktop-entry.sh installs the icons under
    installer = (REPO / "resources" / "linux" / "install-desktop-entry.sh").read_text(encoding="utf-8")
    assert "apps/pneumo-desktop.png" in installer and "apps/pneumo-desktop.svg" in installer
    for icon in ("app.png", "app.svg"):
        assert (REPO / "resources" / "icons" / icon).is_file()


def test_bench_package_skips_without_a_build(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_package.py"), "--dist", str(tmp_path / "none"), "--images", "5"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0
    assert "SKIPPED" in out.stdout


BUILT = REPO / "dist" / "pneumo-desktop"


@pytest.mark.skipif(not (BUILT / "_internal").is_dir(), reason="no package built (make package)")
def test_the_built_package_holds_no_opencv():
    found = sorted(str(p.relative_to(BUILT)) for p in BUILT.rglob("*")
                   if p.name.lower().startswith(("cv2", "opencv", "libopencv")))
    assert found == [], f"OpenCV in the package: {found[:5]}"


def test_the_spec_excludes_opencv_and_the_smoke_test_checks_for_it():
    spec = (REPO / "pyinstaller.spec").read_text(encoding="utf-8")
    assert '"cv2",' in spec
    smoke = (REPO / ".ci" / "package_smoke.sh").read_text(encoding="utf-8")
    assert "cv2 opencv_python_headless.libs" in smoke
