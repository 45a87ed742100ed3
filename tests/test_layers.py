"""The package's layers: no import points from a lower layer to a higher one.

Read from the sources' own import statements (``TYPE_CHECKING`` imports included: a type
a module names is a dependency too).  Lowest first; a package may import its own modules
and any lower layer's, never a higher one's.  The decision and judge layers also import
nothing that does I/O: they take the clock and randomness as arguments.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "canaryproxy"

LAYERS: list[set[str]] = [
    {"vocabulary"},
    {"http", "config"},
    {"decide", "judge"},
    {"outcomes", "state"},
    {"engine"},
    {"runtime"},
    {"admin"},
    {"app"},
    {"fleet"},
    {"demo"},
    {"operate"},
    {"cli"},
    {"__main__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
PURE = ("decide", "judge")
IO_MODULES = {
    "aiohttp",
    "asyncio",
    "httptools",
    "prometheus_client",
    "selectors",
    "socket",
    "ssl",
    "subprocess",
    "threading",
    "uvloop",
}


def unit_of(module: str) -> str:
    """``canaryproxy.decide.director`` → ``decide``; ``canaryproxy.app`` → ``app``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if name != "canaryproxy":
            found.append((name, path))
    return found


def imports_of(path: Path, name: str = "") -> set[str]:
    """Absolute names of what ``path`` (module ``name``) imports; relative imports resolved."""
    names: set[str] = set()
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            if node.module is None or module == "canaryproxy":  # from . import x
                names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


MODULES = modules()


def test_every_module_has_a_layer() -> None:
    assert sorted({unit_of(name) for name, _ in MODULES} - RANK.keys()) == []


def upward_imports(name: str, path: Path) -> list[str]:
    """What ``name`` imports from its own layer's other packages or from higher ones."""
    own = unit_of(name)
    return sorted(
        imported
        for imported in imports_of(path, name)
        if imported.startswith("canaryproxy.")
        and unit_of(imported) != own
        and RANK[unit_of(imported)] >= RANK[own]
    )


def io_imports(path: Path) -> list[str]:
    imported = imports_of(path)
    return sorted(
        i for i in imported if i.split(".")[0] in IO_MODULES or i.startswith("canaryproxy.engine")
    )


@pytest.mark.parametrize(("name", "path"), MODULES, ids=[name for name, _ in MODULES])
def test_no_import_points_up(name: str, path: Path) -> None:
    own = unit_of(name)
    assert upward_imports(name, path) == [], f"{name} ({own}) imports from above or beside it"


@pytest.mark.parametrize(
    ("name", "path"),
    [m for m in MODULES if unit_of(m[0]) in PURE],
    ids=[name for name, _ in MODULES if unit_of(name) in PURE],
)
def test_decisions_and_the_judge_do_no_io(name: str, path: Path) -> None:
    assert io_imports(path) == []


def test_the_checks_catch_an_upward_or_io_import(tmp_path: Path) -> None:
    """So that a green run means something."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\nimport asyncio\n"
        "if TYPE_CHECKING:\n    from canaryproxy.engine.exchange import Exchange\n"
        "from canaryproxy.judge import budget\n"
    )
    assert upward_imports("canaryproxy.decide.bad", bad) == [
        "canaryproxy.engine.exchange",
        "canaryproxy.judge",
    ]
    relative = tmp_path / "relative.py"
    relative.write_text("from ..runtime.service import Service\nfrom . import routing\n")
    assert upward_imports("canaryproxy.decide.relative", relative) == [
        "canaryproxy.runtime.service"
    ]
    assert io_imports(bad) == ["asyncio", "canaryproxy.engine.exchange"]
