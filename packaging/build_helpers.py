"""The procedure of the PyInstaller build; `pyinstaller.spec` holds the data (what to bundle, exclude, keep) and
calls these. Plain functions over PyInstaller's TOC lists (tuples of `(dest, src, kind)`), so they are tested
without building (tests/test_build_helpers.py). Imported by the spec with packaging/ on sys.path; never by the app.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path

from native_libs import close_load_gaps, drop_debug_sections, elf_load_segments, elf_sections

from pneumo_desktop.core.model_card import (
    CARD_FILENAME,
    TFLITE_FILENAME,
    ModelCard,
    ModelIntegrityError,
    load_model_card,
    verify_artifacts,
)

SPEC = "pyinstaller.spec"
# What the app needs of a model folder (+ report/ and MODEL_CARD.md when present); never model.keras.
MODEL_RUNTIME_FILES = (TFLITE_FILENAME, CARD_FILENAME)

Entry = tuple[str, str, str]  # PyInstaller TOC entry: (destination in the bundle, source path, kind)
DataPair = tuple[str, str]  # Analysis(datas=...): (source path, destination folder)


def app_version(root: Path) -> str:
    """`__version__` of the source tree, read without importing the app."""
    text = (root / "pneumo_desktop" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'__version__ = "([^"]+)"', text)
    if match is None:
        raise SystemExit(f"{SPEC}: no __version__ in pneumo_desktop/__init__.py")
    return match.group(1)


# ------------------------------------------------------------------------------------------- data files


def check_model(model_dir: Path) -> ModelCard:
    """The card of a model folder whose runtime files are present and match it; else stop the build.

    A broken package can never be produced this way (the app would only say "reinstall" at run time).
    """
    try:
        card = load_model_card(model_dir)
        verify_artifacts(model_dir, card, (TFLITE_FILENAME,))
    except ModelIntegrityError as exc:
        raise SystemExit(
            f"{SPEC}: {exc}. The package bundles the trained model: export it to resources/model first "
            "(make train / trainer export), or set PNEUMO_MODEL_DIR to a model folder for a development build."
        ) from None
    return card


def tree(src: Path, dest: str, skip: Iterable[str] = ()) -> list[DataPair]:
    """(source file, destination folder) for every file below `src`, keeping sub-folders; hidden files skipped."""
    skip = set(skip)
    pairs = []
    for path in sorted(Path(src).rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and not any(part in skip or part.startswith(".") for part in rel.parts):
            pairs.append((str(path), str(Path(dest) / rel.parent)))
    return pairs


def model_datas(model_dir: Path, dest: str = "resources/model") -> list[DataPair]:
    """The model's runtime files, its human-readable card and report/ (the evaluation figures) when present."""
    pairs = [(str(model_dir / name), dest) for name in MODEL_RUNTIME_FILES]
    if (model_dir / "manifest.json").is_file():  # the checksums the app verifies at load (core.model_card)
        pairs.append((str(model_dir / "manifest.json"), dest))
    if (model_dir / "MODEL_CARD.md").is_file():
        pairs.append((str(model_dir / "MODEL_CARD.md"), dest))
    if (model_dir / "report").is_dir():
        pairs += tree(model_dir / "report", f"{dest}/report")
    else:
        print(f"{SPEC}: WARNING: {model_dir} has no report/ (the model card's evaluation figures)")
    return pairs


def licence_files(dist_name: str) -> list[DataPair]:
    """The licence files in a wheel's .dist-info folder, for licenses/<dist>/ (sub-paths kept)."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        return []
    found = []
    for file in dist.files or ():
        rel = Path(str(file))
        if not rel.parts[0].endswith(".dist-info"):
            continue
        if rel.name.upper().startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE")):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                # <dist>.dist-info/licenses/<sub path>: keep the sub path (numpy ships a dozen LICENSE.md)
                parts = rel.parts[2:-1] if len(rel.parts) > 2 and rel.parts[1] == "licenses" else ()
                found.append((str(path), str(Path("licenses", dist_name, *parts))))
    return found


def python_licence() -> Path | None:
    """The embedded Python's licence (PSF) on Linux, Windows and macOS framework layouts."""
    base = Path(sys.base_prefix)
    for candidate in (base / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "LICENSE.txt",
                      base / "LICENSE.txt"):
        if candidate.is_file():
            return candidate
    return None


def versions_file(out: Path, app_version: str, dists: Iterable[str]) -> Path:
    """Write the exact versions of what is bundled (licence compliance: LGPL users must know which Qt)."""
    lines = [f"Pneumo Desktop {app_version}, built {platform.system()} {platform.machine()}, "
             f"Python {platform.python_version()}"]
    for dist in dists:
        try:
            lines.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    try:
        from PySide6.QtCore import qVersion

        lines.append(f"Qt {qVersion()}")
    except ImportError:
        pass
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------- excluded modules


def excluded_uses(package_dir: Path, excludes: Iterable[str]) -> list[str]:
    """Files of `package_dir` that import an excluded module (or use numpy.random through the namespace).

    Each exclusion is only safe while the app does not use the module: the spec stops the build on any hit
    instead of shipping an app that fails when that code path runs.
    """
    excludes = list(excludes)
    problems = []
    for path in sorted(Path(package_dir).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        imported = set(re.findall(r"^\s*(?:from|import)\s+([\w.]+)", text, flags=re.M))
        for group, line in re.findall(r"^\s*from\s+PySide6\s+import\s+(?:\(([^)]*)\)|([^\n]*))", text, flags=re.M):
            names = re.sub(r"#[^\n]*", "", group or line).replace("\\", " ")
            imported.update("PySide6." + n.split()[0] for n in names.split(",") if n.strip())
        if re.search(r"\b(?:np|numpy)\.random\b", text):
            imported.add("numpy.random")
        for module in excludes:
            if any(name == module or name.startswith(module + ".") for name in imported):
                problems.append(f"{path.relative_to(package_dir.parent)} uses {module}")
    return problems


# ------------------------------------------------------------------------------------------- Qt plugins


def plugin_stem(filename: str, is_win: bool) -> str:
    """`libqxcb.so` -> `qxcb`, `qwindows.dll` -> `qwindows`."""
    stem = Path(filename).name.split(".")[0]
    return stem[3:] if stem.startswith("lib") and not is_win else stem


def keep_qt_entry(dest: str, keep_plugins: Mapping[str, set[str] | None], is_win: bool) -> bool:
    """False for Qt translations and for plugins not in `keep_plugins` ({category: stems, or None = all})."""
    parts = Path(dest).parts
    if ("translations" in parts and "Qt" in parts) or parts[:2] == ("PySide6", "translations"):
        return False
    if "plugins" in parts and parts[0] == "PySide6":
        i = parts.index("plugins")
        if len(parts) <= i + 2:
            return True
        category, stem = parts[i + 1], plugin_stem(parts[-1], is_win)
        if category not in keep_plugins:
            return False
        wanted = keep_plugins[category]
        return wanted is None or stem in wanted
    return True


# ------------------------------------------------------------------------------------------- shared libraries


def _prunable(dest: str, kind: str) -> bool:
    """Only libraries that are there as dependencies may go: top-level ones (found on the system),
    PySide6/Qt/lib and the wheels' auditwheel-vendored *.libs folders (loaded only via DT_NEEDED)."""
    parts = Path(dest).parts
    return kind in ("BINARY", "SYMLINK") and not parts[-1].startswith("libpython") and (
        len(parts) == 1 or parts[:3] == ("PySide6", "Qt", "lib") or parts[0].endswith(".libs")
    )


def prune_unlinked(
    binaries: list[Entry], datas: list[Entry], get_imports: Callable[[str], Iterable[tuple[str, object]]]
) -> tuple[list[Entry], list[Entry], list[str]]:
    """Drop the prunable libraries that nothing kept links to (DT_NEEDED closure of what stays).

    `get_imports(src)` lists (name, resolved path) of a binary's linked libraries, as PyInstaller's
    bindepend.get_imports does. Returns (binaries, datas, dropped destinations).
    """
    files = {dest: (src, kind) for dest, src, kind in binaries if kind != "SYMLINK"}
    by_basename: dict[str, str] = {}
    for dest in files:
        by_basename.setdefault(Path(dest).name, dest)
    for dest, src, kind in binaries:  # top-level symlinks name the same library as their target
        if kind == "SYMLINK" and src in files:
            by_basename.setdefault(Path(dest).name, src)

    queue = [dest for dest, (src, kind) in files.items() if not _prunable(dest, kind)]
    kept = set(queue)
    while queue:
        dest = queue.pop()
        try:
            imports = list(get_imports(files[dest][0]))
        except Exception:  # cannot read it: keep it and assume it links to nothing more
            imports = []
        for name, _resolved in imports:
            target = by_basename.get(Path(name).name)
            if target is not None and target not in kept:
                kept.add(target)
                queue.append(target)

    dropped = sorted(dest for dest in files if dest not in kept)
    gone = set(dropped)
    binaries = [(d, s, k) for d, s, k in binaries if d not in gone and not (k == "SYMLINK" and s in gone)]
    datas = [(d, s, k) for d, s, k in datas if not (k == "SYMLINK" and s in gone)]
    return binaries, datas, dropped


# Libraries every start of the app loads (numpy and its OpenBLAS at `import numpy`, ICU with Qt Core), shipped
# with their static symbol tables: `--strip-unneeded` drops those (~3 MB) and keeps the dynamic symbols; the
# package smoke test (--self-test, score, GUI start) then runs each of them.
_STRIP_UNNEEDED = ("ai_edge_litert/", "numpy.libs/libscipy_openblas", "numpy/_core/_multiarray_umath",
                   "PySide6/Qt/lib/libicu")


def strip_mode(dest: str, src: str, kind: str, python_root: Path) -> str | None:
    """How to strip a binary, or None to leave it alone.

    * the Python runtime built from source (pyenv) ships libpython and lib-dynload with DWARF debug info
      (~24 MB): `--strip-debug` removes only that (code identical, symbol table kept for backtraces);
    * LiteRT's libraries, numpy's core and OpenBLAS and Qt's ICU ship their full static symbol table
      (_STRIP_UNNEEDED): `--strip-unneeded` keeps the dynamic symbols that linking and import use;
    * any other library still carrying DWARF debug sections (CharLS 6 MB, Pillow's core 2.6 MB, ...) gets
      `--strip-debug`, which removes those sections only and leaves what the loader reads untouched;
    * the rest is left alone (strip_binaries also keeps the original if its loadable segments changed).
    """
    if kind not in ("BINARY", "EXTENSION"):
        return None
    if "site-packages" not in src and Path(src).resolve().is_relative_to(python_root):
        return "--strip-debug"
    if Path(dest).as_posix().startswith(_STRIP_UNNEEDED):
        return "--strip-unneeded"
    if any(name.startswith(".debug_") for name, *_rest in elf_sections(Path(src))):
        return "--strip-debug"
    return None


def strip_binaries(binaries: list[Entry], out_dir: Path, python_root: Path) -> tuple[list[Entry], int]:
    """Stripped copies (in `out_dir`) replace the sources of the binaries `strip_mode` picks, and compacted copies
    those with empty space between their segments; returns bytes saved.

    A copy that `strip` fails on, or whose loadable segments (what the dynamic loader maps) differ from the
    original's, is not used: that happens to libraries patchelf rewrote (auditwheel), for which
    native_libs.drop_debug_sections makes the copy instead, or the original stays.
    """
    result, saved = [], 0
    for dest, src, kind in binaries:
        original = Path(src)
        mode = strip_mode(dest, src, kind, python_root)
        target = out_dir / dest
        if mode:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
            ok = (subprocess.run(["strip", mode, str(target)], capture_output=True).returncode == 0
                  and elf_load_segments(target) == elf_load_segments(original))
            if not ok:
                rewritten = drop_debug_sections(original.read_bytes())
                if rewritten is not None:
                    target.write_bytes(rewritten)
                    ok = True
            if ok:
                src = str(target)
        if kind in ("BINARY", "EXTENSION"):
            # A patchelf'ed library may hold megabytes of alignment padding (native_libs.close_load_gaps).
            closed = close_load_gaps(Path(src).read_bytes())
            if closed is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(closed)
                os.chmod(target, original.stat().st_mode & 0o777)
                src = str(target)
        if src != str(original):
            saved += original.stat().st_size - Path(src).stat().st_size
        result.append((dest, src, kind))
    return result, saved


# ------------------------------------------------------------------------------------------- system licences


def debian_package(path: str) -> str | None:
    """The Debian package that installed `path` (tries the /lib <-> /usr/lib merged-usr aliases)."""
    candidates = {str(Path(path).resolve()), str(Path(path))}
    for p in list(candidates):
        if p.startswith("/lib"):
            candidates.add("/usr" + p)
        elif p.startswith("/usr/lib"):
            candidates.add(p[4:])
    for p in sorted(candidates):
        out = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if out.returncode == 0 and ":" in out.stdout:
            return out.stdout.split(":")[0].strip()
    return None


def system_licences(
    binaries: list[Entry], out_dir: Path, package_of: Callable[[str], str | None] = debian_package
) -> list[Entry]:
    """Licences of the system libraries PyInstaller copied from the build machine (glib, dbus, X11/xcb, ...;
    several are LGPL, whose text must travel with them): each package's copyright file as
    licenses/system/<package>.copyright and licenses/system/LIBRARIES.txt mapping libraries to packages.
    Returns the data entries to add.
    """
    packages: dict[str, Path] = {}
    lines = []
    for dest, src, kind in binaries:
        if kind == "BINARY" and len(Path(dest).parts) == 1 and src.startswith(("/lib", "/usr/lib")):
            package = package_of(src)
            lines.append(f"{dest}: {package or 'unknown package'}")
            copyright_file = Path(f"/usr/share/doc/{package}/copyright")
            if package and copyright_file.is_file():
                packages[package] = copyright_file
    if not lines:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "LIBRARIES.txt").write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
    entries = [("licenses/system/LIBRARIES.txt", str(out_dir / "LIBRARIES.txt"), "DATA")]
    for package, copyright_file in sorted(packages.items()):
        target = out_dir / f"{package}.copyright"
        shutil.copyfile(copyright_file, target)
        entries.append((f"licenses/system/{package}.copyright", str(target), "DATA"))
    return entries
