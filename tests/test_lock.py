"""The lock: uv.lock matches pyproject.toml, and the check that says so can fail.

``make test`` runs ``uv lock --check`` before anything else; these tests run the same uv
(the pinned one in ``.tools``, installed by ``make``) on copies of the project.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UV = ROOT / ".tools" / "bin" / "uv"


def lock_check(project: Path, offline: bool = True) -> subprocess.CompletedProcess[str]:
    """``uv lock --check``; a stale lock needs the index (PyPI) to say what it lacks."""
    if not UV.exists():
        pytest.fail(f"missing {UV}: `make` installs uv from uv-bootstrap.txt")
    return subprocess.run(
        [
            str(UV),
            "lock",
            "--check",
            *(["--offline"] if offline else []),
            "--python",
            sys.executable,
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )


def copy_project(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "uv.lock", "README.md", "setup.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_the_lock_matches_pyproject(tmp_path: Path) -> None:
    result = lock_check(copy_project(tmp_path))
    assert result.returncode == 0, result.stderr


def test_a_runtime_dependency_the_lock_lacks_fails_the_check(tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    # h11 is locked only as a development package: as a runtime one, the lock is stale.
    pyproject.write_text(text.replace('    "rich",\n', '    "rich",\n    "h11",\n', 1))
    result = lock_check(project, offline=False)
    assert result.returncode != 0
    assert "needs to be updated" in result.stderr


def test_every_pin_carries_hashes() -> None:
    text = (ROOT / "uv.lock").read_text()
    packages = text.count("[[package]]")
    assert packages > 30
    # Each registry package has an sdist or wheels, each with its sha256.
    assert text.count('source = { registry = "https://pypi.org/simple" }') == packages - 1
    assert 'hash = "sha256:' in text
    bootstrap = (ROOT / "uv-bootstrap.txt").read_text()
    assert bootstrap.startswith("uv==")
    assert "--hash=sha256:" in bootstrap
