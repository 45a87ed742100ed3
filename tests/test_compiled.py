"""The request path runs compiled (mypyc), and never from a stale build.

``make`` compiles the modules listed in pyproject.toml ``[tool.canaryproxy] compiled`` in
place; these tests fail when the suite would otherwise test the interpreted sources while
the proxy ships compiled ones, or an old extension while the source has moved on.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "canaryproxy"


def compiled_names() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        names: list[str] = tomllib.load(f)["tool"]["canaryproxy"]["compiled"]
    return names


def source_of(name: str) -> Path:
    """``decide.director`` → canaryproxy/decide/director.py"""
    return PACKAGE / f"{name.replace('.', '/')}.py"


def extensions_of(name: str) -> list[Path]:
    stem = source_of(name).with_suffix("")
    return [stem.with_name(stem.name + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES]


def test_every_listed_module_exists() -> None:
    missing = [n for n in compiled_names() if not source_of(n).is_file()]
    assert missing == []


@pytest.mark.skipif(
    os.environ.get("CANARYPROXY_COMPILE") == "0", reason="CANARYPROXY_COMPILE=0: interpreted"
)
@pytest.mark.parametrize("name", compiled_names())
def test_module_is_loaded_compiled(name: str) -> None:
    module = importlib.import_module(f"canaryproxy.{name}")
    assert module.__file__ is not None
    assert Path(module.__file__).suffix == ".so", f"{name} runs interpreted: run `make build`"


@pytest.mark.parametrize("name", compiled_names())
def test_no_extension_is_older_than_its_source(name: str) -> None:
    source = source_of(name)
    stale = [
        ext.name
        for ext in extensions_of(name)
        if ext.exists() and ext.stat().st_mtime < source.stat().st_mtime
    ]
    assert stale == [], f"{stale} built before {source.name} last changed: run `make build`"


def test_compiled_modules_import_from_any_directory(tmp_path: Path) -> None:
    # mypyc's shared library must live inside the package: at the top level it is found
    # only when the checkout happens to be on sys.path (it is for pytest, not for the
    # installed `canaryproxy` command).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    names = ", ".join(f"canaryproxy.{name}" for name in compiled_names())
    result = subprocess.run(
        [sys.executable, "-c", f"import {names}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(
    os.environ.get("CANARYPROXY_COMPILE") == "0", reason="CANARYPROXY_COMPILE=0: interpreted"
)
def test_no_extension_outlives_its_listing() -> None:
    # An extension left from a module since dropped from the list would shadow its .py.
    built = {
        ".".join(path.relative_to(PACKAGE).with_name(path.name.split(".", 1)[0]).parts)
        for path in PACKAGE.rglob("*.so")
    }
    assert built == {*compiled_names(), "compiled__mypyc"}
