"""Runs a packaged model's handler once: JSON in (a file or stdin), JSON out (stdout).

This is the entry point of a model's package until it is served over HTTP; it is how a built
package is checked end to end without any server.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any, Mapping, Optional, Sequence

from ml_runtime import wire
from ml_runtime.codec import InputError
from ml_runtime.errors import INVALID_REQUEST, MODEL_REJECTED_INPUT
from ml_runtime.handler import HandlerError, LoadedModel

EXIT_MODEL_ERROR = 1
EXIT_BAD_INPUT = 2


def main(model: Mapping[str, Any], argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=model["name"],
        description=f"Run the model {model['address']} (v{model['version']}) once on a JSON input.",
    )
    parser.add_argument(
        "input",
        nargs="?",
        default="-",
        help="JSON file with the request body; `-` (the default) reads standard input.",
    )
    parser.add_argument(
        "--endpoint", default="predict", help="The handler method to call (default: predict)."
    )
    args = parser.parse_args(argv)

    try:
        if args.input == "-":
            payload = wire.loads(sys.stdin.read())
        else:
            with open(args.input, "rb") as f:
                payload = wire.loads(f.read())
    except (OSError, UnicodeDecodeError, wire.MalformedJSON) as e:
        print(f"error: cannot read a JSON request from {args.input}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    try:
        loaded = LoadedModel(model["handler"])
        result = loaded.call(args.endpoint, payload)
    except InputError as e:
        print(f"error: {INVALID_REQUEST}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except HandlerError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_MODEL_ERROR
    except ValueError as e:  # as served: the model refuses this input (a 422)
        print(f"error: {MODEL_REJECTED_INPUT}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception:
        traceback.print_exc()
        print(f"error: the model {model['address']} raised an exception.", file=sys.stderr)
        return EXIT_MODEL_ERROR
    if isinstance(result, bytes):  # an endpoint annotated `-> bytes`: its bytes as they are
        sys.stdout.flush()
        sys.stdout.buffer.write(result)
        sys.stdout.buffer.flush()
        return 0
    try:
        out = wire.dumps(result)
    except wire.NonFiniteNumber as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_MODEL_ERROR
    sys.stdout.write(out.decode() + "\n")
    return 0
