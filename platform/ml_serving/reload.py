"""Live reload, for `pants run`: edits to a model's code or artifacts restart its workers in
seconds, with no rebuild, and a broken edit keeps the last good version serving.

The server watches the model's source folders in the repository (polling their files' mtimes:
the standard library has no file events, and a few hundred files cost microseconds). On a
change it builds a new overlay, a folder with the packaged code's files (generated artifacts
included) overlaid by the repository's, starts a new set of workers with the overlay first on
their path, and once one has loaded the model, sends new requests to them and lets the old
ones finish theirs. If the new workers fail to load, the old ones keep serving and the error
is printed. The routes follow the new code (a new endpoint or type is served at once).

Requirements are not in an overlay: a change to a requirements file or lockfile needs a new
environment. With a rebuild command (`pants run` gives its own `pants package` of the model),
the server runs it, and the new workers start from the rebuilt package; while it builds, and if
it fails (a lockfile that no longer matches its requirements), the running version serves on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from ml_contract.package_layout import ENTRYPOINT_MODULE
from ml_serving.workers import WorkerPool

logger = logging.getLogger("ml_serving")

POLL_SECONDS = 0.3
# Editors write a file in steps (truncate, write, rename): wait until nothing changes for this long.
SETTLE_SECONDS = 0.2
# A packed PEX's own files, not the model's.
PEX_INTERNALS = {".bootstrap", ".deps", "__main__.py", "PEX-INFO", "__pex__"}
SKIPPED_DIRS = {"__pycache__", ".git"}
# How a Python worker's command ends (ml_runtime.entrypoint.worker_command): its interpreter is
# the model environment's, which a rebuild replaces.
PYTHON_WORKER = [ENTRYPOINT_MODULE, "worker"]


@dataclass(frozen=True)
class Rebuild:
    """How to get a new environment when the requirements change: a command that writes the
    model's package, and where its model.pex lands."""

    command: tuple[str, ...]
    package: Path  # the rebuilt model.pex


@dataclass
class ReloadSources:
    roots: tuple[Path, ...]  # source roots in the repository: their files overlay the package's
    base: Optional[Path]  # the packaged code (a packed model.pex): generated artifacts live there
    rebuild_files: tuple[Path, ...] = ()  # requirements, lockfile: a change needs a new environment

    def files(self) -> dict[Path, tuple[int, int]]:
        """Every watched file with its (mtime, size)."""
        seen = {}
        for root in self.roots:
            for path in _walk(root):
                seen[path] = _stamp(path)
        for path in self.rebuild_files:
            if path.exists():
                seen[path] = _stamp(path)
        return seen


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _walk(root: Path, skip: frozenset = frozenset()):
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not (directory == str(root) and d in skip))
        for name in sorted(files):
            if not (directory == str(root) and name in skip) and not name.endswith(".pyc"):
                yield Path(directory) / name


def build_overlay(sources: ReloadSources, parent: Path) -> Path:
    """A new folder: the package's code files, then the repository's over them. Python files
    are copied (a model may resolve its own path, which must stay in the overlay, beside the
    generated artifacts); the rest are linked (weights can be big)."""
    overlay = Path(tempfile.mkdtemp(prefix="code-", dir=parent))
    layers = [*([(sources.base, frozenset(PEX_INTERNALS))] if sources.base else []),
              *((root, frozenset()) for root in sources.roots)]
    for root, skip in layers:
        for path in _walk(root, skip):
            target = overlay / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target.unlink()
            if path.suffix == ".py":
                shutil.copyfile(path, target)
            else:
                target.symlink_to(path.resolve())
    return overlay


@dataclass
class Reloader:
    """Swaps the app's worker pool for a new one built from the edited code."""

    app: object  # ml_serving.app.ModelApp: its `pool` is swapped
    sources: ReloadSources
    # A pool of workers started by this command, with this overlay first on their path.
    new_pool: Callable[[Path, list[str]], WorkerPool]
    command: list[str]  # how a worker starts: the package's, until a rebuild gives another
    rebuild: Optional[Rebuild] = None
    grace: float = 30.0
    say: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))
    _overlays: list[Path] = field(default_factory=list)
    _workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ml-reload-")))

    def first_overlay(self) -> Path:
        overlay = build_overlay(self.sources, self._workdir)
        self._overlays.append(overlay)
        return overlay

    async def watch(self) -> None:
        self.say(f"live reload: watching {', '.join(str(r) for r in self.sources.roots)}; an edit restarts "
                 f"the workers, a broken one keeps this version serving")
        before = self.sources.files()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            now = self.sources.files()
            if now == before:
                continue
            while True:  # until the editor is done
                await asyncio.sleep(SETTLE_SECONDS)
                settled = self.sources.files()
                if settled == now:
                    break
                now = settled
            changed = sorted(str(p) for p in set(now) | set(before) if now.get(p) != before.get(p))
            before = now
            requirements = [c for c in changed if Path(c) in self.sources.rebuild_files]
            if requirements and not await self.rebuilt(requirements):
                continue
            await self.reload(changed)

    async def rebuilt(self, changed: Sequence[str]) -> bool:
        """Rebuild the environment after a requirements change; whether the new one is ready."""
        if self.rebuild is None:
            self.say(f"live reload: {', '.join(changed)} changed: the model's environment needs a rebuild; "
                     f"stop and run it again (this version keeps serving)")
            logger.warning(json.dumps({"event": "reload_needs_rebuild", "changed": list(changed)}))
            return False
        self.say(f"live reload: {', '.join(changed)} changed: rebuilding the environment "
                 f"(`{' '.join(self.rebuild.command)}`); this version serves meanwhile")
        # A Pants of its own: the one that started this server is busy running it.
        process = await asyncio.create_subprocess_exec(
            *self.rebuild.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PANTS_CONCURRENT": "true"})
        output, _ = await process.communicate()
        if process.returncode != 0:
            logger.error(json.dumps({"event": "rebuild_failed", "changed": list(changed), "exit_code": process.returncode}))
            self.say(f"live reload: the rebuild failed (exit {process.returncode}); the last good version keeps "
                     f"serving. Its output ends:\n{output.decode(errors='replace')[-3000:]}")
            return False
        package = self.rebuild.package.resolve()
        self.sources.base = package
        if self.command[-2:] == PYTHON_WORKER:
            # The rebuilt environment's interpreter, as the package's entry point found its own:
            # the venv its PEX sets up (PEX's own start would drop the overlay from the path).
            probe = await asyncio.create_subprocess_exec(
                str(package / "__main__.py"), "-c", "import sys; print(sys.executable)",
                stdout=asyncio.subprocess.PIPE, env={**os.environ, "PEX_INTERPRETER": "1"})
            interpreter, _ = await probe.communicate()
            self.command = [interpreter.decode().strip(), *self.command[1:]]
        return True

    async def reload(self, changed: Sequence[str]) -> bool:
        started = time.perf_counter()
        overlay = build_overlay(self.sources, self._workdir)
        pool = self.new_pool(overlay, self.command)
        try:
            await pool.start()
        except Exception as e:
            await pool.stop(0)
            shutil.rmtree(overlay, ignore_errors=True)
            logger.error(json.dumps({"event": "reload_failed", "changed": list(changed), "error": str(e)}))
            self.say(f"live reload: the edited model failed to load ({e}); its worker's log is above. "
                     f"The last good version keeps serving.")
            return False
        old = self.app.pool
        self.app.swap(pool)
        seconds = time.perf_counter() - started
        logger.warning(json.dumps({"event": "reloaded", "changed": list(changed), "seconds": round(seconds, 3)}))
        self.say(f"live reload: {', '.join(changed)} changed; serving the new version ({seconds:.1f} s)")
        previous = self._overlays[:]
        self._overlays = [overlay]
        asyncio.ensure_future(self._retire(old, previous))
        return True

    async def _retire(self, pool: WorkerPool, overlays: list[Path]) -> None:
        await pool.stop(self.grace)
        for overlay in overlays:
            shutil.rmtree(overlay, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)
