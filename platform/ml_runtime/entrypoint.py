"""What a packaged model runs: `serve` (the default), `worker` or `once`.

Called by the generated entry point with the model's manifest. `serve` hands over to the
server, which lives in its own environment (a separate PEX or venv) and starts workers with
this same entry point's `worker` command, so the model's environment never holds server code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ml_runtime import r_worker

USAGE = """\
usage: {prog} [serve [SERVER OPTIONS] | worker | once [INPUT] [--endpoint NAME]]

  serve   serve the model over HTTP (default); `serve --help` lists the server's options
  worker  run one model worker (started by the server)
  once    run the handler once on a JSON request (a file, or standard input)
"""


def main(model: Mapping[str, Any], argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args and not args[0].startswith("-") else "serve"
    if command in ("-h", "--help", "help"):
        print(USAGE.format(prog=model["name"]))
        return 0
    if command in ("worker", "once") and model.get("runtime") == r_worker.RUNTIME:
        print(f"error: {model['name']} is an R model: its workers are R processes the server starts; "
              "use `serve` (the default).", file=sys.stderr)
        return 2
    if command == "worker":
        from ml_runtime.worker import main as worker_main

        return worker_main(model)
    if command == "once":
        from ml_runtime.once import main as once_main

        return once_main(model, args)
    if command == "serve":
        return serve(model, args)
    print(USAGE.format(prog=model["name"]), file=sys.stderr)
    print(f"error: unknown command {command!r}", file=sys.stderr)
    return 2


def server_command() -> list[str]:
    """How to start the server: $ML_SERVER, else the server.pex packaged beside this model."""
    configured = os.environ.get("ML_SERVER")
    if configured:
        return configured.split()
    # PEX sets $PEX to the package being run: dist/models.<name>/<name>/model.pex
    package = os.environ.get("PEX")
    if package:
        candidate = Path(package).resolve().parent / "server.pex"
        if candidate.exists():
            # A zipapp PEX is executable itself; a packed one through its __main__.py.
            return [str(candidate)] if candidate.is_file() else [str(candidate / "__main__.py")]
    raise SystemExit(
        "error: cannot find the model server: set ML_SERVER to its command, or run the model "
        "from its package (dist/models.<name>/<name>/model.pex), which has server.pex beside it."
    )


def worker_command(model: Mapping[str, Any]) -> list[str]:
    """How the server starts one of the model's workers."""
    if model.get("runtime") == r_worker.RUNTIME:
        try:
            command = r_worker.worker_command(r_worker.find_handler(model["handler"], sys.path))
        except (r_worker.RMissing, FileNotFoundError) as e:
            raise SystemExit(f"error: {model['name']}: {e}") from None
        os.environ.update(r_worker.R_ENV)  # the server's environment is its workers'
        return command
    # Workers run this environment's interpreter directly: no PEX bootstrap per worker start.
    return [sys.executable, "-m", "__ml_model_main__", "worker"]


def serve(model: Mapping[str, Any], args: list[str]) -> int:
    worker = worker_command(model)
    command = [
        *server_command(),
        "--manifest", json.dumps(dict(model)),
        "--worker-command", json.dumps(worker),
        *args,
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    # exec: the server becomes this process, so signals (SIGTERM as PID 1) reach it directly.
    os.execvp(command[0], command)
