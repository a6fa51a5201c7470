"""A scratch git repository made from this one, for the tests that run ./pants (or CI scripts)
on a git history of their own commits."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

GITIGNORE = "/dist/\n/.pants.d/\n/.pids/\n"


def git(repo: Path, *args: str) -> str:
    """Runs git in `repo` as a test user; its standard output."""
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout


def commit_change(repo: Path, path: str, line: str) -> None:
    """Appends `line` to `path` (created with its folders if missing) and commits it."""
    target = repo / path
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a") as f:
        f.write(line)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"change {path}")


def scratch_repo(destination: Path, tops: Sequence[str], *, ignore: Sequence[str] = ("__pycache__",),
                 ignore_in: Mapping[str, Sequence[str]] = {}, append: Mapping[str, str] = {}) -> Path:
    """Copies the top-level entries `tops` of the repository (the current directory: in a test
    sandbox, the files //:repo puts there) into `destination` and makes it a git repository on
    branch `main` with one commit, "initial"; returns `destination`.

    Names matching the glob patterns `ignore` are left out everywhere, those of `ignore_in[top]`
    under `top` too, and tests/integration (where this module is) always. Before the commit, each
    text of `append` is appended to its path (a file created if missing), and a .gitignore keeps
    Pants' outputs out of the history.
    """
    for top in tops:
        source = Path(top)
        if source.is_dir():
            skip = (*ignore, *ignore_in.get(top, ()))
            shutil.copytree(source, destination / top, ignore=shutil.ignore_patterns(*skip))
        else:
            shutil.copy2(source, destination / top)
    # //:repo leaves the integration tests out; this module is in a sandbox only because they
    # import it, and is no part of the copy.
    shutil.rmtree(destination / "tests" / "integration", ignore_errors=True)
    for path, text in append.items():
        with (destination / path).open("a") as f:
            f.write(text)
    (destination / ".gitignore").write_text(GITIGNORE)
    git(destination, "init", "-q", "-b", "main")
    git(destination, "add", "-A")
    git(destination, "commit", "-q", "-m", "initial")
    return destination
