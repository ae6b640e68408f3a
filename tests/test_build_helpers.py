"""packaging/build_helpers.py: the build's procedure, tested without building (the frozen app itself is checked
by .ci/package_smoke.sh)."""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "packaging"))

import build_helpers as bh  # noqa: E402 - packaging/ is not a package (its name is taken by PyPI's `packaging`)
import native_libs  # noqa: E402

import pneumo_desktop  # noqa: E402


def test_the_spec_is_data_and_calls() -> None:
    tree = ast.parse((REPO / "pyinstaller.spec").read_text(encoding="utf-8"))
    procedures = [f"{type(node).__name__} at line {node.lineno}" for node in ast.walk(tree)
                  if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Lambda, ast.While))]
    assert procedures == [], f"procedure belongs in packaging/build_helpers.py: {procedures}"
    called = {node.func.attr for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "bh"}
    assert {"check_model", "excluded_uses", "keep_qt_entry", "prune_unlinked", "strip_binaries"} <= called
    assert all(hasattr(bh, name) for name in called)
    native = {node.func.attr for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "native_libs"}
    assert "replace_icu_data" in native and all(hasattr(native_libs, name) for name in native)


def test_app_version_is_the_packages() -> None:
    assert bh.app_version(REPO) == pneumo_desktop.__version__


# ------------------------------------------------------------------ model check and data files


def test_check_model_accepts_a_consistent_folder(tiny_model_dir: Path) -> None:
    assert bh.check_model(tiny_model_dir).name == "tiny-test-model"


def test_check_model_refuses_a_changed_or_incomplete_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    changed = shutil.copytree(tiny_model_dir, tmp_path / "changed")
    data = bytearray((changed / "model.tflite").read_bytes())
    data[-1] ^= 0xFF
    (changed / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(SystemExit, match=r"does not match the model card.*PNEUMO_MODEL_DIR"):
        bh.check_model(changed)
    (changed / "model.tflite").unlink()
    with pytest.raises(SystemExit, match="is missing"):
        bh.check_model(changed)
    with pytest.raises(SystemExit, match=r"no model_card\.json"):
        bh.check_model(tmp_path / "empty")


def test_model_datas_ship_the_runtime_files_and_report_never_the_keras_model(tmp_path: Path, capsys) -> None:
    assert "model.keras" not in bh.MODEL_RUNTIME_FILES
    folder = tmp_path / "model"
    (folder / "report" / "sub").mkdir(parents=True)
    for name in ("model.tflite", "model_card.json", "model.keras", "MODEL_CARD.md", "report/roc.png",
                 "report/sub/a.csv", "report/.hidden"):
        (folder / name).write_bytes(b"x")
    pairs = bh.model_datas(folder)
    assert sorted(pairs) == sorted([
        (str(folder / "model.tflite"), "resources/model"),
        (str(folder / "model_card.json"), "resources/model"),
        (str(folder / "MODEL_CARD.md"), "resources/model"),
        (str(folder / "report" / "roc.png"), "resources/model/report"),
        (str(folder / "report" / "sub" / "a.csv"), "resources/model/report/sub"),
    ])
    shutil.rmtree(folder / "report")
    bh.model_datas(folder)
    assert "has no report/" in capsys.readouterr().out


def test_licence_files_keep_sub_paths_and_skip_unknown_distributions() -> None:
    assert bh.licence_files("no-such-distribution-here") == []
    pairs = bh.licence_files("numpy")
    assert pairs and all(dest.startswith("licenses/numpy") and Path(src).is_file() for src, dest in pairs)


def test_versions_file_names_the_bundled_versions(tmp_path: Path) -> None:
    out = bh.versions_file(tmp_path / "w" / "VERSIONS.txt", "9.9.9", ["numpy", "no-such-distribution-here"])
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("Pneumo Desktop 9.9.9, built ")
    assert any(line.startswith("numpy ") for line in lines) and not any("no-such" in line for line in lines)
    assert any(line.startswith("Qt 6.") for line in lines)


# ------------------------------------------------------------------ excluded modules


def test_excluded_uses_finds_every_way_of_importing(tmp_path: Path) -> None:
    package = tmp_path / "app"
    package.mkdir()
    (package / "ok.py").write_text("import numpy as np\nfrom PySide6 import QtCore, QtGui\nx = np.zeros(3)\n")
    (package / "lazy.py").write_text("def f():\n    import tensorflow as tf\n")
    (package / "qt.py").write_text("from PySide6 import (\n    QtCore,  # fine\n    QtNetwork,\n)\n")
    (package / "rng.py").write_text("import numpy as np\nnoise = np.random.default_rng(0)\n")
    excludes = ["tensorflow", "PySide6.QtNetwork", "numpy.random", "scipy"]
    assert bh.excluded_uses(package, excludes) == [
        "app/lazy.py uses tensorflow", "app/qt.py uses PySide6.QtNetwork", "app/rng.py uses numpy.random",
    ]


def test_the_app_uses_none_of_the_typical_exclusions() -> None:
    excludes = ["tensorflow", "keras", "trainer", "matplotlib", "PySide6.QtNetwork", "PySide6.QtPdf"]
    assert bh.excluded_uses(REPO / "pneumo_desktop", excludes) == []


# ------------------------------------------------------------------ Qt plugins


@pytest.mark.parametrize(
    ("dest", "is_win", "kept"),
    [
        ("PySide6/Qt/plugins/platforms/libqxcb.so", False, True),
        ("PySide6/Qt/plugins/platforms/libqwayland-egl.so", False, False),
        ("PySide6/Qt/plugins/platforms/qwindows.dll", True, True),
        ("PySide6/plugins/imageformats/qjpeg.dll", True, True),
        ("PySide6/Qt/plugins/imageformats/libqsvg.so", False, False),
        ("PySide6/Qt/plugins/styles/libqanything.so", False, True),  # None = the whole category
        ("PySide6/Qt/plugins/sqldrivers/libqsqlite.so", False, False),  # category not kept
        ("PySide6/Qt/plugins/README", False, True),  # not inside a category
        ("PySide6/Qt/translations/qt_de.qm", False, False),
        ("PySide6/translations/qtbase_fr.qm", True, False),
        ("numpy/core/_multiarray_umath.so", False, True),
    ],
)
def test_keep_qt_entry(dest: str, is_win: bool, kept: bool) -> None:
    keep = {"platforms": {"qxcb", "qwindows"}, "imageformats": {"qjpeg"}, "styles": None}
    assert bh.keep_qt_entry(dest, keep, is_win) is kept


# ------------------------------------------------------------------ shared libraries


def test_prune_unlinked_keeps_the_closure_of_what_stays() -> None:
    binaries = [
        ("numpy/_core/_multiarray.so", "/s/multiarray.so", "EXTENSION"),  # not prunable: a root
        ("libA.so.1", "/s/libA.so.1", "BINARY"),  # linked by the extension
        ("libB.so.2", "/s/libB.so.2", "BINARY"),  # linked by libA only
        ("libGtk.so.3", "/s/libGtk.so.3", "BINARY"),  # nothing links it: dropped
        ("libGtk.so", "libGtk.so.3", "SYMLINK"),  # goes with its target
        ("PySide6/Qt/lib/libQt6Svg.so.6", "/s/svg", "BINARY"),  # only the dropped plugin linked it
        ("pillow.libs/libjpeg-1a2b.so", "/s/jpeg", "BINARY"),  # linked by an unreadable root: dropped too
        ("PIL/_imaging.so", "/s/imaging.so", "EXTENSION"),
        ("libpython3.11.so.1.0", "/s/libpython", "BINARY"),  # never pruned
    ]
    datas = [("libGtk.so", "libGtk.so.3", "SYMLINK"), ("resources/x.png", "/s/x.png", "DATA")]
    links: dict[str, list[tuple[str, None]]] = {
        "/s/multiarray.so": [("libA.so.1", None)], "/s/libA.so.1": [("/usr/lib/libB.so.2", None)],
    }

    def get_imports(src: str) -> list[tuple[str, None]]:
        if src == "/s/imaging.so":
            raise OSError("unreadable")
        return links.get(src, [])

    kept, kept_datas, dropped = bh.prune_unlinked(binaries, datas, get_imports)
    assert dropped == ["PySide6/Qt/lib/libQt6Svg.so.6", "libGtk.so.3", "pillow.libs/libjpeg-1a2b.so"]
    assert [d for d, _, _ in kept] == [
        "numpy/_core/_multiarray.so", "libA.so.1", "libB.so.2", "PIL/_imaging.so", "libpython3.11.so.1.0",
    ]
    assert kept_datas == [("resources/x.png", "/s/x.png", "DATA")]


def test_strip_mode(tmp_path: Path) -> None:
    python_root = tmp_path / "python"
    lib = python_root / "lib" / "python3.11" / "lib-dynload" / "_ssl.so"
    assert bh.strip_mode("lib-dynload/_ssl.so", str(lib), "EXTENSION", python_root) == "--strip-debug"
    site = python_root / "lib" / "python3.11" / "site-packages" / "ai_edge_litert" / "_pywrap.so"
    assert bh.strip_mode("ai_edge_litert/_pywrap.so", str(site), "EXTENSION", python_root) == "--strip-unneeded"
    assert bh.strip_mode("cv2/cv2.so", "/elsewhere/cv2.so", "EXTENSION", python_root) is None
    assert bh.strip_mode("lib-dynload/_ssl.so", str(lib), "DATA", python_root) is None
    # libraries every start loads, shipped with their static symbol tables
    for dest in ("numpy.libs/libscipy_openblas64_-1234.so", "numpy/_core/_multiarray_umath.cpython-311.so",
                 "PySide6/Qt/lib/libicui18n.so.73"):
        assert bh.strip_mode(dest, "/elsewhere/x.so", "BINARY", python_root) == "--strip-unneeded"
    # any other library: --strip-debug only if it carries DWARF sections
    with_debug = tmp_path / "with_debug.so"
    shutil.copy2(sys.executable, with_debug)
    has_debug = any(name.startswith(".debug_") for name, *_ in bh.elf_sections(with_debug))
    assert bh.strip_mode("x/with_debug.so", str(with_debug), "BINARY", python_root) == (
        "--strip-debug" if has_debug else None)


@pytest.mark.skipif(shutil.which("strip") is None, reason="needs binutils' strip")
def test_strip_binaries_uses_the_stripped_copy_and_leaves_the_original(tmp_path: Path) -> None:
    python_root = tmp_path / "python"
    python_root.mkdir()
    elf = python_root / "libpython-like.so"
    shutil.copy2(sys.executable, elf)  # an ELF file under the "Python root": gets --strip-debug
    text = tmp_path / "python" / "not-elf.so"
    text.write_text("not a binary")  # strip fails: the original stays in the list
    before = elf.read_bytes()
    entries = [("libpython-like.so", str(elf), "BINARY"), ("not-elf.so", str(text), "BINARY"),
               ("x.png", "/s/x.png", "DATA")]
    result, saved = bh.strip_binaries(entries, tmp_path / "out", python_root.resolve())
    assert result[0] == ("libpython-like.so", str(tmp_path / "out" / "libpython-like.so"), "BINARY")
    assert result[1:] == entries[1:] and saved >= 0
    assert elf.read_bytes() == before


def test_system_licences_map_libraries_to_packages(tmp_path: Path) -> None:
    binaries = [
        ("libdbus-1.so.3", "/usr/lib/x86_64-linux-gnu/libdbus-1.so.3", "BINARY"),
        ("libmystery.so", "/lib/libmystery.so", "BINARY"),
        ("PySide6/Qt/lib/libQt6Core.so.6", "/usr/lib/x/libQt6Core.so.6", "BINARY"),  # inside a wheel: not ours
        ("libfoo.so", "/opt/libfoo.so", "BINARY"),  # not a system library path
    ]
    packages = {"/usr/lib/x86_64-linux-gnu/libdbus-1.so.3": "no-such-package-for-tests"}
    entries = bh.system_licences(binaries, tmp_path / "sys", packages.get)
    assert entries == [("licenses/system/LIBRARIES.txt", str(tmp_path / "sys" / "LIBRARIES.txt"), "DATA")]
    assert (tmp_path / "sys" / "LIBRARIES.txt").read_text().splitlines() == [
        "libdbus-1.so.3: no-such-package-for-tests", "libmystery.so: unknown package",
    ]
    assert bh.system_licences([], tmp_path / "none") == []
