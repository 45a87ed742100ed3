"""The repository stands alone: nothing tracked points outside it (a team's notes, issue
numbers), and every relative link in the docs reaches a file that is there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "build", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
# What a clone has no way to follow: the team's shared notes, and issue numbers.
OUTSIDE = [
    re.compile(r"\.\./shared"),
    re.compile(r"\bSPEC\.md\b"),
    re.compile(r"\bissues?\s*#?\s*\d+\b", re.IGNORECASE),
    re.compile(r"(?<![\w&])#\d{1,4}\b(?![0-9a-fA-F])"),  # "#12", not "#fff" or "&#39;"
]
THIS_FILE = Path(__file__).resolve()


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        names = [n for n in out.decode().split("\0") if n]
        return [ROOT / n for n in names if (ROOT / n).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        return [
            p
            for p in ROOT.rglob("*")
            if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)
        ]


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:4096]:
        return None  # binary (a screenshot)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_tracked_file_points_outside_the_repository() -> None:
    found = []
    for path in tracked_files():
        if path.resolve() == THIS_FILE or path.suffix in (".so", ".png", ".json"):
            continue
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for pattern in OUTSIDE:
                match = pattern.search(line)
                if match:
                    found.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r}")
    assert found == []


def test_the_checks_above_would_catch_what_they_look_for() -> None:
    caught = ["see ../shared/SPEC.md", "as issue 2 asks", "fixed in Issue #14", "(#12)"]
    passed = ["color: #fff;", "&#39;", "a 5xx issue", "step 2/5", "issues we found"]
    assert all(any(p.search(s) for p in OUTSIDE) for s in caught)
    assert not any(p.search(s) for p in OUTSIDE for s in passed)


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_relative_link_in_the_docs_reaches_a_file() -> None:
    broken = []
    for path in tracked_files():
        if path.suffix != ".md":
            continue
        for target in LINK.findall(path.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor in the same page
            file_part = target.split("#", 1)[0]
            if not (path.parent / file_part).exists():
                broken.append(f"{path.relative_to(ROOT)} → {target}")
    assert broken == []
