"""Every public definition of the library has a docstring: the API reference of the docs site
is generated from them. Public means a module, or a class, function or method (of a public
class, nested methods included) whose name does not start with ``_``."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ddim"
Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def undocumented(node: ast.AST, path: Path, prefix: str = "") -> list[str]:
    """``path name`` of each public definition under ``node`` without a docstring, walking
    into public classes."""
    missing = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, Definition) and not child.name.startswith("_"):
            if not ast.get_docstring(child):
                missing.append(f"{path} {prefix}{child.name}")
            if isinstance(child, ast.ClassDef):
                missing += undocumented(child, path, f"{prefix}{child.name}.")
    return missing


def test_the_library_has_python_files() -> None:
    assert len(list(SRC.rglob("*.py"))) > 50


def test_every_public_definition_has_a_docstring() -> None:
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        module = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        shown = path.relative_to(SRC.parents[1])
        if not ast.get_docstring(module):
            missing.append(f"{shown} <module>")
        missing += undocumented(module, shown)
    assert not missing, f"{len(missing)} public definition(s) lack a docstring:\n" + "\n".join(
        missing
    )
