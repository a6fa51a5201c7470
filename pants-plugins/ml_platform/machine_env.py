"""The environment of tests that use this machine: its tools (podman, skopeo, R, Chromium, git),
its Pants and its caches (HOME), or services they start from them.

A test's environment is part of its cache key, so what such a test found is keyed on the machine
that found it (ML_TEST_MACHINE): Pants replays it on this machine, as before, and never on another
one, not even through the shared build cache (README: "The shared build cache"), unless the
machines say they are alike: CI runners of one image set ML_TEST_MACHINE to `.ci/install-deps
--key` (the OS release and the tools' versions) and share these results too. Every other test
gets no machine environment at all, so its result is shared by every clone and every CI runner.
"""

from __future__ import annotations

import os
import socket

# What the tools these tests run read from the environment: where to find them, the caches and
# the Pants bootstrap under HOME, and this machine's wheel folder (./pants: ML_PLATFORM_WHEELS),
# so that the Pants these tests run resolves as the one running them does.
MACHINE_ENV_VARS = ("HOME", "PATH", "PYENV_ROOT", "PIP_FIND_LINKS", "ML_PLATFORM_WHEELS")
# What tests keep for people to look at (the pages' screenshots), under the repository.
ARTIFACTS_DIR = "dist/test/artifacts"
_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def machine_id() -> str:
    """ML_TEST_MACHINE when it is set (machines alike for these tests, e.g. CI runners of one
    image), else this machine's systemd id (a fresh one on every new VM or CI runner), plus its
    host name for containers that share an image's id."""
    given = os.environ.get("ML_TEST_MACHINE", "").strip()
    if given:
        return given
    for path in _MACHINE_ID_FILES:
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value:
            return f"{value}-{socket.gethostname()}"
    return socket.gethostname()


def machine_test_env() -> tuple[str, ...]:
    """`extra_env_vars` for a `python_tests` that uses this machine (a BUILD file symbol; BUILD
    files are read in the repository's root)."""
    return (*MACHINE_ENV_VARS, f"ML_TEST_ARTIFACTS={os.getcwd()}/{ARTIFACTS_DIR}",
            f"ML_TEST_MACHINE={machine_id()}")
