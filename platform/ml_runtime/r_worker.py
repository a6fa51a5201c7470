"""How a model whose handler is an R file is served: the command that starts its worker.

The worker is `r/worker.R` (beside this file), run by R's own binary rather than the `Rscript`
or `R` shell wrappers, because a model image has no shell; the environment those wrappers would
set is set here instead. R and the model's R packages come from Debian (the model's
`system_packages`), so they are at Debian's paths in the image and on a Debian host alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from ml_runtime import errors

# The manifest's `runtime` for these models: ml_contract.runtimes.R, which this environment
# cannot import (tests/integration/worker_protocol_test.py holds the two equal).
RUNTIME = "r"
R_HOME = "/usr/lib/R"  # r-base-core's R_HOME
R_BINARY = f"{R_HOME}/bin/exec/R"
WORKER_SCRIPT = Path(__file__).parent / "r" / "worker.R"
# What /usr/lib/R/bin/R exports before it runs the binary; the worker needs them in its environment.
R_ENV = {
    "R_HOME": R_HOME,
    "R_SHARE_DIR": "/usr/share/R/share",
    "R_INCLUDE_DIR": "/usr/share/R/include",
    "R_DOC_DIR": "/usr/share/R/doc",
}
# The error kinds the worker writes, from their one definition.
ERROR_KINDS = {name: getattr(errors, name) for name in
               ("MALFORMED_JSON", "INVALID_REQUEST", "MODEL_REJECTED_INPUT", "UPSTREAM_FAILED")}


class RMissing(RuntimeError):
    pass


def worker_command(handler: str | os.PathLike[str]) -> list[str]:
    """The argv of one R worker serving the model file `handler`."""
    if not os.access(R_BINARY, os.X_OK):
        raise RMissing(
            f"this model's worker runs R ({R_BINARY}), which is not installed here. Its image has "
            "R from the model's system packages; to run it outside its image, install the Debian "
            "packages of its system-packages lock (e.g. `apt-get install --no-install-recommends "
            "r-base-core r-cran-jsonlite` and the model's r-cran-* packages)."
        )
    return [R_BINARY, "--no-echo", "--no-restore", "--no-save", f"--file={WORKER_SCRIPT}", "--args",
            str(handler), json.dumps(ERROR_KINDS)]


def with_handler(command: list[str], handler: str | os.PathLike[str]) -> list[str]:
    """`command` (from worker_command) serving another copy of the model's file: live reload
    swaps in the edited one. (Here, not in the server: the worker script is the model
    environment's, which the server's environment lacks.)"""
    at = command.index("--args") + 1
    return [*command[:at], str(handler), *command[at + 1:]]


def find_handler(relative_path: str, search_path: list[str]) -> Path:
    """The model's R file: like a module, it sits at its source root on the environment's path."""
    for entry in search_path:
        candidate = Path(entry or ".") / relative_path
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"the model's R handler {relative_path} is not in its environment "
                            f"(looked in {', '.join(search_path)})")
