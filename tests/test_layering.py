"""The package's layers, read from its source: who may import whom. Function-level imports
count as much as module-level ones. (How large a module may grow is not a line count but
the rule of DESIGN.md and the README's layout: one idea per module.)"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ddim"


def module_name(path: Path) -> str:
    """``ddim.train.loop`` for ``src/ddim/train/loop.py`` (``ddim.train`` for its ``__init__``)."""
    parts = ("ddim", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, absolute; ``from a import b`` gives ``a`` and ``a.b``."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            anchor = package[: len(package) + 1 - node.level] if node.level else []
            base = ".".join(filter(None, [*anchor, node.module]))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def within(module: str, packages: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``packages`` or inside one."""
    return any(module == p or module.startswith(f"{p}.") for p in packages)


MODULES = sorted(PACKAGE.rglob("*.py"))


def violations(sources: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """``file imports module`` for each import of ``sources`` inside ``forbidden``."""
    return sorted(
        f"{path.relative_to(PACKAGE.parent)} imports {module}"
        for path in sources
        for module in set(imported(path))
        if within(module, forbidden)
    )


def under(folder: str) -> list[Path]:
    """The modules of the subpackage ``ddim.<folder>``."""
    return [p for p in MODULES if p.relative_to(PACKAGE).parts[0] == folder]


def test_the_modules_are_found() -> None:
    assert PACKAGE / "sampling.py" in MODULES and PACKAGE / "cli" / "__init__.py" in MODULES


#: What each room of DESIGN.md's layout must not import. Dependencies point one way:
#: core <- models <- formats <- workflows, speed <- train, eval <- serve, cli. The core is
#: the paper's math and its helpers (the modules at the top of the package, ``solvers`` and
#: the bundled ``assets``); ``speed`` stands beside ``workflows``, which run the model they
#: are given, and prepares it; ``python -m ddim.train`` is ``ddim train`` without the CLI.
ABOVE = {
    "core": ("models", "formats", "workflows", "speed", "train", "eval", "serve", "cli"),
    "models": ("formats", "workflows", "speed", "train", "eval", "serve", "cli"),
    "formats": ("workflows", "speed", "train", "eval", "serve", "cli"),
    "workflows": ("speed", "train", "eval", "serve", "cli"),
    "speed": ("workflows", "train", "eval", "serve", "cli"),
    "train": ("eval", "serve", "cli"),
    "eval": ("serve", "cli"),
    "serve": ("cli",),
    "cli": (),
}
CORE = ("solvers", "assets")


def room(name: str) -> list[Path]:
    """The modules of room ``name``: a subpackage, or the core (the package's ``__init__``,
    its public face, has a rule of its own)."""
    if name != "core":
        return under(name)
    top = [p for p in MODULES if p.parent == PACKAGE and p.name != "__init__.py"]
    return top + [p for folder in CORE for p in under(folder)]


def test_every_subpackage_is_a_room() -> None:
    folders = {p.relative_to(PACKAGE).parts[0] for p in MODULES if p.parent != PACKAGE}
    assert folders == {*ABOVE, *CORE} - {"core"}


@pytest.mark.parametrize("name", list(ABOVE))
def test_no_room_imports_a_room_above_it(name: str) -> None:
    assert violations(room(name), tuple(f"ddim.{r}" for r in ABOVE[name])) == []


def test_the_package_face_loads_nothing_until_asked() -> None:
    """``ddim/__init__.py`` names the public API of several rooms, each imported on first
    use (and for type checkers), never when ``ddim`` is imported."""
    assert top_level_imports(PACKAGE / "__init__.py") == set()


def top_level_imports(path: Path) -> set[str]:
    """The ``ddim`` modules ``path`` imports when it is loaded (module-level statements only;
    imports inside functions or ``if TYPE_CHECKING`` blocks run later or never)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    statements = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    known = {module_name(p) for p in MODULES}
    out = set()
    for node in statements:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        out |= {n for n in names if n in known}
    return out


def test_no_import_cycle() -> None:
    def ancestors(module: str) -> set[str]:  # loaded before the module itself, always
        parts = module.split(".")
        return {".".join(parts[:k]) for k in range(1, len(parts) + 1)}

    graph = {m: top_level_imports(p) - ancestors(m) for p in MODULES if (m := module_name(p))}
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(module) :], module]))
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, [*stack, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def option_flags(path: Path) -> Iterator[str]:
    """The flags (``--steps``, ``--clip/--no-clip``) of every ``*option(...)`` call in
    ``path``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name.endswith("option"):
                yield from (
                    arg.value
                    for arg in node.args
                    if isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and arg.value.startswith("--")
                )


#: Grid axes of `ddim eval` take several values of a field (``--steps 10,20,50``,
#: ``--spacing`` repeated): not one run's option.
GRID_AXES = {("eval_options.py", "--steps"), ("eval.py", "--spacing")}


def test_each_sampler_option_is_declared_once_under_cli() -> None:
    """Every field of SamplerOptions becomes a click option in cli/run_options.py only; the
    other commands take it from there (with a default of their own at most)."""
    from ddim.cli.run_options import FLAGS
    from ddim.sampler_options import declared_fields

    fields = {FLAGS.get(name, (f"--{name.replace('_', '-')}",))[0] for name in declared_fields()}
    found = sorted(
        (path.name, flag)
        for path in under("cli")
        if path.name != "run_options.py"
        for flag in option_flags(path)
        if flag in fields
    )
    assert [f for f in found if f not in GRID_AXES] == []
