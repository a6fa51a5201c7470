"""The languages a model's handler may be written in, as the plugin and the runtime agree on them.

A Python handler is `<file>.py:<Class>` (or `<module>:<Class>`); an R handler is a file ending in
R_HANDLER_SUFFIX, served by the R worker (platform/ml_runtime/r/worker.R). The manifest's
`runtime` says which: the model's entry point reads it (ml_runtime.entrypoint, which cannot import
this package and so repeats the two names; a test holds them equal).
"""

from __future__ import annotations

PYTHON = "python"
R = "r"
R_HANDLER_SUFFIX = ".R"
# What every R model's image needs from Debian, added to its own `system_packages`: R, the JSON
# library the worker speaks with, and a shell with `which` and `rm`, since R runs
# `/bin/sh -c "which ..."` while loading its utils package and `rm -Rf` on its temporary
# directory at exit (Debian's packages never declare these Essential ones).
R_SYSTEM_PACKAGES = ("r-base-core", "r-cran-jsonlite", "dash", "debianutils", "coreutils")


def runtime_of(entry_point: str) -> str:
    return R if entry_point.endswith(R_HANDLER_SUFFIX) else PYTHON
