"""Builds the request path's modules as C extensions with mypyc.

Everything else about the package is in pyproject.toml, including the list of compiled
modules (``[tool.canaryproxy] compiled``). Those run on every request; compiled, they cost
the proxy about 40 % less CPU per request (benchmarks/README.md, "Compiled modules").
Their .py sources stay in the package: with ``CANARYPROXY_COMPILE=0`` at install time
nothing is compiled (no C compiler needed) and the same code runs interpreted.
"""

import os
import tempfile
import tomllib
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def compiled_modules() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        names: list[str] = tomllib.load(f)["tool"]["canaryproxy"]["compiled"]
    return [f"canaryproxy/{name.replace('.', '/')}.py" for name in names]


def ext_modules() -> list[object]:
    if os.environ.get("CANARYPROXY_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify

    # The same build wherever it runs: the installed packages are never looked at
    # (no_site_packages), so third-party types count as Any whether or not pydantic and
    # friends happen to be installed (pip's build isolation has only setuptools and mypy),
    # and modules that are not compiled are not checked here (follow_imports = silent).
    # `make test` type-checks everything strictly with pyproject.toml's [tool.mypy].
    with tempfile.NamedTemporaryFile("w", suffix=".ini", delete=False) as config:
        config.write(
            "[mypy]\nignore_missing_imports = True\nno_site_packages = True\n"
            "follow_imports = silent\n"
        )
    try:
        options = [f"--config-file={config.name}", *compiled_modules()]
        return list(mypycify(options, opt_level="3", group_name="canaryproxy.compiled"))
    finally:
        os.unlink(config.name)


setup(ext_modules=ext_modules())
