"""Scratch git repositories made from this one: for the tests that run ./pants (or CI scripts)
on a git history of their own commits (`scratch_repo`), and for the benches, which build in a
clone of the current commit (`clone`), optionally with Pants caches of its own so that its first
build is truly cold (`own_caches`), and stop its pantsd at the end (`stop_pantsd`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, Mapping, Sequence

GITIGNORE = "/dist/\n/.pants.d/\n/.pids/\n"


# The date of a scratch repository's first commit: the same tree is then the same commit (as two
# clones of one commit are), whenever it is made. Images are labelled with their commit, so two
# scratch copies made a second apart would otherwise never share an image build.
INITIAL_COMMIT_DATE = "2020-01-01T00:00:00+00:00"


def git(repo: Path, *args: str, env: Mapping[str, str] = {}) -> str:
    """Runs git in `repo` as a test user, with `env` added to the environment; its standard output."""
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=repo, check=True, capture_output=True, text=True, env={**os.environ, **env},
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
    branch `main` with one commit, "initial" (dated INITIAL_COMMIT_DATE); returns `destination`.

    Names matching the glob patterns `ignore` are left out everywhere, those of `ignore_in[top]`
    under `top` too, and tests/integration (the tests that call this) always. Before the commit, each
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
    # //:repo leaves the integration tests out; they are in a sandbox only as the tests being
    # run, and are no part of the copy.
    shutil.rmtree(destination / "tests" / "integration", ignore_errors=True)
    for path, text in append.items():
        with (destination / path).open("a") as f:
            f.write(text)
    (destination / ".gitignore").write_text(GITIGNORE)
    git(destination, "init", "-q", "-b", "main")
    git(destination, "add", "-A")
    git(destination, "commit", "-q", "-m", "initial",
        env={"GIT_AUTHOR_DATE": INITIAL_COMMIT_DATE, "GIT_COMMITTER_DATE": INITIAL_COMMIT_DATE})
    return destination


def repo_root() -> Path:
    """The repository the current directory is in (`pants run` runs the benches in it)."""
    return Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], check=True, capture_output=True,
                               text=True).stdout.strip())


def clone(destination: Path) -> Path:
    """A git clone of this repository's current commit at `destination`."""
    subprocess.run(["git", "clone", "-q", str(repo_root()), str(destination)], check=True)
    return destination


def own_caches(root: Path) -> Dict[str, str]:
    """This process's environment, with Pants' store, named caches and execution root in `root`
    (created empty if missing): a first build there downloads and builds everything."""
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PANTS_LOCAL_STORE_DIR": str(root / "lmdb_store"),
        "PANTS_NAMED_CACHES_DIR": str(root / "named_caches"),
        "PANTS_LOCAL_EXECUTION_ROOT_DIR": str(root / "tmp"),
    }


def stop_pid(pid: int, expect: str, timeout: float = 10.0) -> None:
    """SIGTERM `pid` (then SIGKILL) if it is still the process we started (`expect` in its cmdline)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if expect not in cmdline:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stop_pantsd(clone: Path) -> None:
    """Stops the pantsd a clone's Pants runs started, if it is still running."""
    # Pants 2.17 keeps its pid in <buildroot>/.pids/<fingerprint>/pantsd/pid; older ones in .pants.d.
    for pid_file in [*clone.glob(".pids/*/pantsd/pid"), clone / ".pants.d/pids/pantsd/pid"]:
        with contextlib.suppress(OSError, ValueError):
            stop_pid(int(pid_file.read_text().strip()), "pantsd")
