"""The docs say what the code does: the error tree, the files they name, where a named class lives."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pneumo_desktop", "trainer")
DOCS = ("docs/ARCHITECTURE.md", "docs/GUI.md", "docs/CORE_API.md")


def _classes() -> dict[str, tuple[list[str], Path]]:
    """Every class defined in the app and the trainer: name -> (base names, file)."""
    found: dict[str, tuple[list[str], Path]] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    bases = [b.id if isinstance(b, ast.Name) else b.attr for b in node.bases
                             if isinstance(b, (ast.Name, ast.Attribute))]
                    found[node.name] = (bases, path)
    return found


def _error_tree() -> dict[str, str | None]:
    """Each PneumoError subclass -> its parent in the tree (PneumoError -> None)."""
    classes = _classes()
    tree: dict[str, str | None] = {"PneumoError": None}
    grew = True
    while grew:
        grew = False
        for name, (bases, _path) in classes.items():
            parent = next((b for b in bases if b in tree), None)
            if name not in tree and parent is not None:
                tree[name] = parent
                grew = True
    return tree


def _documented_tree(block: str) -> dict[str, str | None]:
    """Names in an indented tree (a line's first word, or comma-separated names on a continuation line) -> parent."""
    documented: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (indent, name) of the open ancestors
    for line in block.splitlines():
        names = re.findall(r"\b([A-Z]\w*Error)\b", line)
        if not names or not line.strip().startswith(names[0]):
            continue  # a description line, or an error named in passing
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        # "A, B, C" before the description (two spaces) lists siblings; otherwise the first word is the name
        listed = re.findall(r"\b([A-Z]\w*Error)\b", line.strip().split("  ")[0]) or names[:1]
        for name in listed:
            documented[name] = stack[-1][1] if stack else None
        stack.append((indent, listed[-1]))
    return documented


def _architecture_block() -> str:
    text = (REPO / "docs/ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## Errors", 1)[1]
    return section.split("```", 2)[1]


def _errors_py_block() -> str:
    docstring = ast.get_docstring(ast.parse((REPO / "pneumo_desktop/core/errors.py").read_text(encoding="utf-8")))
    assert docstring is not None
    return docstring[docstring.index("PneumoError\n"):]


@pytest.mark.parametrize("where", ["docs/ARCHITECTURE.md", "core/errors.py"])
def test_the_documented_error_tree_is_the_code_s(where: str) -> None:
    block = _architecture_block() if where.startswith("docs") else _errors_py_block()
    documented, actual = _documented_tree(block), _error_tree()
    assert sorted(set(documented) - set(actual)) == [], f"{where} names errors that are not PneumoErrors"
    assert sorted(set(actual) - set(documented)) == [], f"{where} omits these PneumoError subclasses"
    wrong = {n: (documented[n], actual[n]) for n in documented if documented[n] != actual[n]}
    assert wrong == {}, f"{where}: (documented parent, actual parent) differ"


def test_the_tree_reader_sees_a_missing_or_invented_class() -> None:
    """The check above can fail: a tree without one real class, or with an invented one, is caught."""
    block = _architecture_block()
    actual = set(_error_tree())
    assert set(_documented_tree(block.replace("OutputLockedError", "Nothing"))) != actual
    assert set(_documented_tree(block + "\n  InventedError            nowhere\n")) != actual


def _named_paths(doc: str) -> list[str]:
    text = (REPO / doc).read_text(encoding="utf-8")
    paths = re.findall(r"`([\w./-]+\.(?:py|md|toml|spec|sh))(?:::\w+)?`", text)
    return sorted(set(paths))


@pytest.mark.parametrize("doc", DOCS)
def test_every_file_a_doc_names_exists(doc: str) -> None:
    # A bare name ("host.py") may be relative to the folder the doc is describing.
    roots = [REPO, REPO / "pneumo_desktop", REPO / "pneumo_desktop/gui", REPO / "pneumo_desktop/gui/controllers",
             REPO / "pneumo_desktop/core", REPO / "pneumo_desktop/cli", REPO / "docs"]
    missing = [p for p in _named_paths(doc) if not any((root / p).exists() for root in roots)]
    assert missing == [], f"{doc} names files that do not exist"


def test_where_a_doc_says_a_class_lives_it_does() -> None:
    """ARCHITECTURE.md's "`Name` (`path.py`)" claims, e.g. `TrainConfig` (`trainer/config.py`)."""
    text = (REPO / "docs/ARCHITECTURE.md").read_text(encoding="utf-8")
    claims = re.findall(r"`(\w+)` \(`([\w/]+\.py)`\)", text)
    assert ("TrainConfig", "trainer/config.py") in claims
    classes = _classes()
    wrong = [(name, path) for name, path in claims
             if name in classes and classes[name][1] != REPO / path]
    unknown = [(name, path) for name, path in claims if name not in classes]
    assert wrong == [] and unknown == []
