"""The shared build cache (BuildGrid on 127.0.0.1, as a team runs it: TLS from a private CA, a
token on every RPC, only CI on main's token writes) between two scratch clones of the repository
at different paths, each with empty local caches of its own (Pants' store and execution root; the
named caches, which hold downloads and never enter a cache key, are the machine's):

- the reading clone gets every cacheable process from the cache, and an image byte for byte the
  same as the writing clone's local build;
- nothing secret, nothing of the writing clone's paths, and nothing of the home folder but the
  Python interpreters' paths (Pants 2.17 keys processes on them; README) is in any cached blob;
- a token that may only read stores nothing; without a token the cache answers nothing; a cache
  that is down: each costs a warning, not the build;
- a push is never replayed from the cache: the registry sees the second push's requests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator

import pytest

from testutil.net import free_port
from testutil.registry import start_registry
from testutil.remote_cache import RunningCache, pants_counters, remote_cache
from testutil.scratch import scratch_repo

TOPS = ("pants", "pants.toml", "BUILD", "pants-plugins", "platform", "models", "tests")
IMAGE = Path("dist/models.iris/iris")
# Values no cached action may hold: the writer runs with them in its environment, as CI does.
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "cache-test-secret-4f1d7e",
    "AWS_SESSION_TOKEN": "cache-test-session-9a2b3c",
    "ML_REGISTRY_PASSWORD": "cache-test-registry-5e6f70",
}
# A Python interpreter, or the folder of one: what Pants 2.17 writes into PEX processes.
INTERPRETER = re.compile(r".*/(bin/python[0-9.]*|bin)$")


def pants(repo: Path, *args: str, env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "pants", "--no-pantsd", "--no-dynamic-ui", "--stats-log", *args],
                          cwd=repo, capture_output=True, text=True, env=env)


def clone_env(root: Path, remote: Dict[str, str], *, write: bool = False, **extra: str) -> Dict[str, str]:
    """remote: what points Pants at the cache (RunningCache.pants_env)."""
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PANTS_REMOTE", "ML_REMOTE"))}
    return {**env, **extra, **remote, "PANTS_CONCURRENT": "true",
            "PANTS_LOCAL_STORE_DIR": str(root / "lmdb_store"),
            "PANTS_LOCAL_EXECUTION_ROOT_DIR": str(root / "tmp"),
            "ML_REMOTE_CACHE_WRITE": "true" if write else "false"}


def edit(repo: Path, why: str) -> None:
    """A change to iris' code, so that its processes need running again."""
    with (repo / "models/iris/src/model.py").open("a") as f:
        f.write(f"# {why}\n")


def digests(repo: Path) -> Dict[str, str]:
    return {str(p.relative_to(repo / IMAGE)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((repo / IMAGE).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Iterator[RunningCache]:
    with remote_cache(tmp_path_factory.mktemp("cache") / "data", tls=True, tokens=True) as running:
        yield running


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, cache: RunningCache) -> Dict[str, Path]:
    """CI on main's token (it writes) and a developer's (reads only)."""
    folder = tmp_path_factory.mktemp("tokens")
    return {subject: cache.token(subject, folder / subject) for subject in ("ci-main", "alice")}


@pytest.fixture(scope="module")
def clones(tmp_path_factory, cache: RunningCache, tokens: Dict[str, Path]):
    """The writer (CI on main) packages iris cold into the cache, then the reader (a developer)
    packages it from there."""
    writer = scratch_repo(tmp_path_factory.mktemp("writer"), TOPS)
    reader = scratch_repo(tmp_path_factory.mktemp("reader-at-another-path"), TOPS)
    writer_caches, reader_caches = tmp_path_factory.mktemp("writer-caches"), tmp_path_factory.mktemp("reader-caches")
    wrote = pants(writer, "package", "models/iris:",
                  env=clone_env(writer_caches, cache.pants_env(tokens["ci-main"]), write=True, **SECRETS))
    assert wrote.returncode == 0, wrote.stderr[-4000:]
    read = pants(reader, "package", "models/iris:", env=clone_env(reader_caches, cache.pants_env(tokens["alice"])))
    assert read.returncode == 0, read.stderr[-4000:]
    return writer, reader, reader_caches, pants_counters(wrote.stderr), pants_counters(read.stderr)


def test_a_clone_with_empty_caches_gets_the_same_image_from_the_cache(clones) -> None:
    writer, reader, _, wrote, read = clones
    counts = {side: {k: v for k, v in counters.items() if k.startswith("remote_cache_")}
              for side, counters in (("writer", wrote), ("reader", read))}
    assert wrote["remote_cache_write_successes"] >= 10, counts
    # Every upload finished before the writer's run ended (pants.toml's session_end_tasks_timeout).
    assert wrote["remote_cache_write_successes"] == wrote["remote_cache_write_attempts"], counts
    # The reader looked up every process the writer stored, and found each: nothing ran again.
    # (Both clones are the same commit, as scratch_repo dates it: images carry their revision.)
    assert read["remote_cache_requests"] == wrote["remote_cache_write_successes"], counts
    assert read["remote_cache_requests_cached"] == read["remote_cache_requests"], counts
    # ... and no lookup failed (the server refused none: serve.py's --max-rpcs).
    assert read["remote_cache_read_errors"] == 0, counts
    assert read["remote_cache_write_attempts"] == 0, counts  # a reader writes nothing
    image = digests(writer)
    assert image and any(name.startswith("image/blobs/") for name in image)
    assert digests(reader) == image


def test_nothing_secret_or_of_this_machine_is_in_the_cache(clones, cache: RunningCache,
                                                          tokens: Dict[str, Path]) -> None:
    writer, *_ = clones
    home = os.environ["HOME"].encode()
    blobs = cache.blobs()
    assert len(blobs) > 20
    # The cache's own tokens too: Pants sends them in a header, never into a process.
    secrets = {**SECRETS, **{f"{subject}'s token": path.read_text().strip() for subject, path in tokens.items()}}
    home_paths = set()
    for blob in blobs:
        data = blob.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in data, f"{name}'s value is in the cached blob {blob.name}"
        assert str(writer).encode() not in data, f"the writer's checkout path is in the cached blob {blob.name}"
        home_paths.update(m.group().decode() for m in re.finditer(re.escape(home) + rb"/[^\x00-\x20:\"']*", data))
    # The interpreters (PEX processes name their Python) and nothing else: not PATH's user
    # folders, not the caches, not the checkout.
    assert home_paths, "expected the interpreters' paths (pants.toml [python-bootstrap])"
    assert {p for p in home_paths if not INTERPRETER.match(p)} == set()


def test_a_token_that_may_only_read_stores_nothing(clones, cache: RunningCache, tokens: Dict[str, Path]) -> None:
    """The server refuses the writes, whatever the client was told: a pull request's CI, or a
    developer who sets ML_REMOTE_CACHE_WRITE=true, cannot fill the cache main reads."""
    _, reader, reader_caches, *_ = clones
    edit(reader, "built by a developer whose token may only read")
    stored = set(cache.blobs())
    result = pants(reader, "package", "models/iris:",
                   env=clone_env(reader_caches, cache.pants_env(tokens["alice"]), write=True))
    assert result.returncode == 0, result.stderr[-4000:]
    counts = pants_counters(result.stderr)
    assert counts["remote_cache_write_attempts"] > 0, counts
    assert counts["remote_cache_write_successes"] == 0, counts
    assert "Failed to write to remote cache" in result.stderr and "Unauthenticated" in result.stderr
    assert set(cache.blobs()) == stored
    assert (reader / IMAGE / "image" / "index.json").is_file()


def test_without_a_token_the_cache_answers_nothing_and_the_build_goes_on(clones, cache: RunningCache) -> None:
    _, reader, reader_caches, *_ = clones
    edit(reader, "built without a token")
    result = pants(reader, "package", "models/iris:", env=clone_env(reader_caches, cache.pants_env()))
    assert result.returncode == 0, result.stderr[-4000:]
    counts = pants_counters(result.stderr)
    assert counts["remote_cache_read_errors"] > 0 and counts["remote_cache_requests_cached"] == 0, counts
    assert "Failed to read from remote cache" in result.stderr and "Unauthenticated" in result.stderr
    assert (reader / IMAGE / "image" / "index.json").is_file()


def test_a_cache_that_is_down_costs_a_warning_not_the_build(clones) -> None:
    _, reader, reader_caches, *_ = clones
    edit(reader, "built while the cache is down")
    down = {"ML_REMOTE_CACHE": f"grpc://127.0.0.1:{free_port()}"}  # nothing listens there
    result = pants(reader, "package", "models/iris:", env=clone_env(reader_caches, down))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Failed to read from remote cache" in result.stderr
    assert (reader / IMAGE / "image" / "index.json").is_file()


def test_a_push_is_never_replayed_from_the_cache(clones, cache: RunningCache, tokens: Dict[str, Path],
                                                 tmp_path: Path) -> None:
    """The same push twice, the registry emptied in between: the second must upload everything
    again, which only a push that really runs does."""
    from ml_image.registry import Auth, pull

    writer, *_ = clones
    with start_registry(tmp_path / "registry", auth="none") as registry:
        env = clone_env(tmp_path / "caches", cache.pants_env(tokens["ci-main"]), write=True)
        option = f"--ml-platform-registry={registry.host}"
        for attempt in (1, 2):
            result = pants(writer, option, "publish", "models/iris:", env=env)
            assert result.returncode == 0, result.stderr[-4000:]
            summary = json.loads(next(line for line in (result.stdout + result.stderr).splitlines()
                                      if line.startswith("{")))
            assert summary["uploaded"] >= 3 and summary["skipped"] == 0, (attempt, summary)
            pulled = pull(f"{registry.host}/ml/iris:v1", tmp_path / f"pulled-{attempt}", Auth(), quiet=True)
            assert f"@{pulled.manifest_digest}" in summary["reference"]
            shutil.rmtree(registry.root / "data")  # an empty registry for the next push


@pytest.mark.parametrize("variables, says", [
    ({"ML_REMOTE_CACHE": "http://cache:8080"}, "is not a REAPI address: write grpc://host:port"),
    ({"ML_REMOTE_CACHE": "grpc://cache:50051", "ML_REMOTE_CACHE_WRITE": "yes"}, "must be true or false"),
])
def test_a_mistyped_cache_setting_is_refused_saying_what_to_write(variables, says) -> None:
    result = subprocess.run(["bash", "pants", "--version"], capture_output=True, text=True,
                            env={**os.environ, **variables})
    assert result.returncode == 1 and says in result.stderr, result.stderr
