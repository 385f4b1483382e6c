"""casesync's layers point one way: every import of every module, read from its source.

A core that knows neither Celery nor the stream; ``thalamus/`` (the API client) and ``settings/``
under it; ``consumers/`` (the stream intake), ``ops/`` (operator functions) and ``tasks/`` (the
Celery side) as adapters over the core; ``cli/`` on top of everything, ``bench/`` beside it.
Imports are read with :mod:`ast`, so those inside functions and ``if TYPE_CHECKING:`` blocks count
as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Each layer and the other layers it may import (its own modules it always may).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "settings": frozenset(),
    "thalamus": frozenset({"settings"}),
    "core": frozenset({"settings", "thalamus"}),
    "consumers": frozenset({"core", "settings", "thalamus"}),
    "ops": frozenset({"core", "settings", "thalamus"}),
    "tasks": frozenset({"core", "consumers", "settings", "thalamus"}),
    # The bench runs the product as a user does: local processes (ops.processes), the simulator.
    "bench": frozenset({"core", "ops", "settings", "thalamus"}),
    "cli": frozenset({"settings", "thalamus", "core", "consumers", "ops", "tasks", "bench"}),
}
LAYERS = tuple(MAY_IMPORT)
#: First-party names no layer may import.
NOT_A_LAYER = ("tests",)

#: Only the Celery side may import Celery or kombu.
CELERY = ("celery", "kombu")
CELERY_FREE = ("settings", "thalamus", "core", "consumers", "ops")

#: Imports that point the wrong way today, by importing layer and imported module: each to be
#: removed by moving code, never added to. The test prints which modules use them, and fails
#: once one is no longer used, so the list shrinks with the code.
KNOWN_WRONG_WAY: dict[tuple[str, str], str] = {}

#: Modules of tasks/ that do not import Celery or kombu themselves, and why they live there.
#: tasks/ is the Celery side: a module that needs neither belongs to another layer.
CELERY_FREE_IN_TASKS: dict[str, str] = {
    # The composition root of a worker process: built by Celery's task on first use.
    "tasks.runtime": "the worker process's composition root, used only by the Celery side",
    # Logs and metrics set up by the Celery entry points before the app is built.
    "tasks.observability": "set up by the Celery entry points before the app exists",
}


@dataclass(frozen=True)
class Import:
    module: str
    #: The casesync or third-party module imported, as precisely as the source names it.
    target: str
    statement: str
    path: Path
    line: int

    @property
    def layer(self) -> str:
        return self.module.split(".")[0]

    @property
    def target_top(self) -> str:
        return self.target.split(".")[0]

    def where(self) -> str:
        return f"`{self.statement}` at {self.path.relative_to(ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path, module: str | None = None) -> list[Import]:
    """Every import in the file, at any depth; ``from a import b`` names ``a.b`` when it is a
    module of casesync's, else ``a``."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        statement = ast.unparse(node) if isinstance(node, (ast.Import, ast.ImportFrom)) else ""
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, statement, path, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append(
                    Import(
                        module,
                        target if is_module(target) else base,
                        statement,
                        path,
                        node.lineno,
                    )
                )
    return found


def modules() -> list[Path]:
    return sorted(
        path
        for layer in LAYERS
        for path in (ROOT / layer).rglob("*.py")
        if "__pycache__" not in path.parts
    )


ALL_IMPORTS = [found for path in modules() for found in imports_of(path)]


def test_every_layer_is_read() -> None:
    read = {found.layer for found in ALL_IMPORTS}
    assert read == set(LAYERS), "a layer without imports, or a folder left out of LAYERS"
    on_disk = {path.name for path in ROOT.iterdir() if (path / "__init__.py").is_file()}
    assert on_disk - {"tests"} == set(LAYERS), "a package that no layer rule covers"


def wrong_way(found: Import) -> str | None:
    """The rule ``found`` breaks, or None."""
    target = found.target_top
    if target in NOT_A_LAYER:
        return f"no casesync module imports {target}/"
    if target not in LAYERS or target == found.layer:
        return None
    allowed = MAY_IMPORT[found.layer]
    if target in allowed:
        return None
    may = ", ".join(sorted(allowed)) or "nothing of casesync"
    return f"{found.layer} may import {may}, not {target}"


def test_no_layer_imports_one_above_it() -> None:
    broken = []
    known = []
    for found in ALL_IMPORTS:
        rule = wrong_way(found)
        if rule is None:
            continue
        if (found.layer, found.target) in KNOWN_WRONG_WAY:
            known.append(found)
            continue
        broken.append(f"{found.module} imports {found.target} ({found.where()}): {rule}")
    for found in sorted(known, key=lambda found: (found.target, found.module)):
        why = KNOWN_WRONG_WAY[found.layer, found.target]
        print(f"known, to fix: {found.module} imports {found.target} ({found.where()}): {why}")
    assert not broken, "imports pointing the wrong way:\n" + "\n".join(broken)
    gone = set(KNOWN_WRONG_WAY) - {(found.layer, found.target) for found in known}
    assert not gone, f"no longer imported, remove from KNOWN_WRONG_WAY: {sorted(gone)}"


def test_only_the_celery_side_imports_celery_or_kombu() -> None:
    broken = [
        f"{found.module} imports {found.target} ({found.where()}): only tasks/ may use "
        f"{' or '.join(CELERY)}; {found.layer} must not"
        for found in ALL_IMPORTS
        if found.layer in CELERY_FREE and found.target_top in CELERY
    ]
    assert not broken, "\n".join(broken)


def test_tasks_holds_only_modules_that_use_celery() -> None:
    uses_celery = {found.module for found in ALL_IMPORTS if found.target_top in CELERY}
    in_tasks = {
        module_name(path)
        for path in (ROOT / "tasks").rglob("*.py")
        if path.name != "__init__.py" or imports_of(path)
    }
    celery_free = in_tasks - uses_celery
    for module in sorted(celery_free & set(CELERY_FREE_IN_TASKS)):
        print(f"known, Celery-free in tasks/: {module}: {CELERY_FREE_IN_TASKS[module]}")
    unexplained = sorted(celery_free - set(CELERY_FREE_IN_TASKS))
    assert not unexplained, (
        f"{', '.join(unexplained)} in tasks/ import neither celery nor kombu: move them to the "
        "layer they serve, or say in CELERY_FREE_IN_TASKS why they stay"
    )
    stale = sorted(set(CELERY_FREE_IN_TASKS) - celery_free)
    assert not stale, f"remove from CELERY_FREE_IN_TASKS (gone or using Celery now): {stale}"


# --- the reader itself -------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "probe.py"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import tasks.app\n", "tasks.app"),
        ("from ops import processes\n", "ops.processes"),
        ("from core.schedule import Job\n", "core.schedule"),
        ("def f():\n    from tasks.runtime import redis_client\n", "tasks.runtime"),
        (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from ops.health import Health\n",
            "ops.health",
        ),
        ("try:\n    import celery\nexcept ImportError:\n    pass\n", "celery"),
    ],
)
def test_imports_are_found_wherever_they_hide(tmp_path: Path, source: str, expected: str) -> None:
    targets = [found.target for found in imports_of(write(tmp_path, source), "consumers.probe")]
    assert expected in targets


def test_relative_imports_are_resolved_from_the_module(tmp_path: Path) -> None:
    path = write(tmp_path, "from . import events\nfrom ..settings import keys\n")
    assert [found.target for found in imports_of(path, "core.probe")] == [
        "core.events",
        "settings.keys",
    ]


def test_a_wrong_way_import_names_the_module_the_import_and_the_rule(tmp_path: Path) -> None:
    found = Import("core.apply", "tasks.runtime", "from tasks.runtime import x", ROOT / "x.py", 3)
    assert wrong_way(found) == ("core may import settings, thalamus, not tasks")
    assert found.where() == "`from tasks.runtime import x` at x.py:3"
    assert wrong_way(Import("settings", "core", "import core", ROOT / "s.py", 1)) == (
        "settings may import nothing of casesync, not core"
    )
    assert wrong_way(Import("cli.main", "bench.suite", "import bench.suite", ROOT, 1)) is None
    assert wrong_way(Import("bench.x", "cli.main", "import cli.main", ROOT, 1)) == (
        "bench may import core, ops, settings, thalamus, not cli"
    )
