"""The repository stands on its own: no committed file points at a document or a path
outside it.

Why: a comment or a page citing notes that only some machines have (a design file beside
the checkout, a home directory) sends every other reader to nothing. What the code needs
from such notes belongs in ``docs/`` (docs/DESIGN-NOTES.md). The rules, on every file
``git ls-files`` lists that reads as text:

- no mention of the old out-of-tree design file;
- no path of a person's machine (``/work/``, ``/home/``, ``/root/``, ``/Users/``);
- every relative path climbing with ``../`` lands inside the repository, on a file or
  folder that exists; so does every relative link of a Markdown page.

System paths a program reads at run time (``/proc``, ``/usr/bin/env``) are not documents
and stay allowed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE_DESIGN = re.compile(r"(?<![\w-])DESIGN\.md")
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|root|Users)/")
#: ``../x`` not inside a URL (``https://a/b/../c`` is a URL's own path, tested elsewhere).
CLIMB = re.compile(r"(?<![\w./:%-])((?:\.\./)+[\w.@-][\w./@-]*)")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def committed_texts() -> list[tuple[Path, str]]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    found = []
    for name in filter(None, listed):
        path = ROOT / name.decode()
        if not path.is_file():
            continue  # deleted in the work tree, not yet committed
        try:
            found.append((path, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue  # binary
    return found


def _inside(base: Path, target: str) -> bool:
    resolved = (base / target).resolve()
    return resolved.is_relative_to(ROOT) and resolved.exists()


def problems(path: Path, text: str) -> list[str]:
    rel = path.relative_to(ROOT)
    found = [f"{rel}: names {m.group(0)}" for m in OUTSIDE_DESIGN.finditer(text)]
    found += [f"{rel}: machine path {m.group(0)!r}" for m in MACHINE_PATH.finditer(text)]
    for m in CLIMB.finditer(text):
        target = m.group(1).rstrip(".,;:")
        if not _inside(path.parent, target):
            found.append(f"{rel}: {target} is not a path of this repository")
    if path.suffix == ".md":
        for m in MARKDOWN_LINK.finditer(text):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
                continue  # a URL, or a site path of the server
            if not _inside(path.parent, target):
                found.append(f"{rel}: link to {target}, which is not in this repository")
    return found


def test_no_committed_file_points_outside_the_repository() -> None:
    texts = committed_texts()
    assert len(texts) > 100  # the listing worked
    here = Path(__file__).resolve()  # its examples break the rules on purpose
    found = [p for path, text in texts if path != here for p in problems(path, text)]
    assert found == []


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("docs/X.md", "see DESIGN.md section 3"),
        ("src/a.py", "# from /home/someone/notes"),
        ("docs/X.md", "as in ../../shared/notes.md"),
        ("docs/X.md", "[notes](../../elsewhere/notes.md)"),
        ("docs/X.md", "[gone](NOT-HERE.md)"),
    ],
)
def test_each_rule_catches_what_it_is_for(name: str, text: str) -> None:
    assert problems(ROOT / name, text) != []


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("docs/X.md", "see [the notes](DESIGN-NOTES.md) and docs/DESIGN-NOTES.md"),
        ("clients/js/README.md", "[Keyfob](../../README.md)"),
        ("tests/a.py", '"https://app.example/cb/../evil"'),
        ("docs/X.md", "[spec](https://example.org/a/../b) and [page](/v1/models)"),
        ("bench/a.py", 'Path("/proc/cpuinfo")'),
    ],
)
def test_what_stays_allowed(name: str, text: str) -> None:
    assert problems(ROOT / name, text) == []
