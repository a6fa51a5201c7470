"""Fuzz one served model's API: validate its OpenAPI document, then run schemathesis on it.

    fuzz.pex <base URL> --report <file.json> [--max-examples N] [--seed N] [--exclude-operation-id ID]...

Every one of schemathesis' checks runs, plus `fuzz.checks`; the exit status is schemathesis'
(0: no failure). The report is schemathesis' JSON run report (cases run, failures found).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from openapi_spec_validator import validate
from schemathesis.config._checks import POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES

# Importing the module registers its check with schemathesis.
from fuzz import checks

# schemathesis' own defaults (the lock pins its version), plus the refusals fuzz.checks vets.
EXPECTED_FOR_VALID_DATA = [*POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES, *map(str, checks.REFUSAL_STATUSES)]
CONFIG = f"""
[checks.positive_data_acceptance]
expected-statuses = [{", ".join(f'"{s}"' for s in EXPECTED_FOR_VALID_DATA)}]
"""


REQUEST_TIMEOUT = 30  # seconds


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="The server's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--report", required=True, help="Where to write schemathesis' JSON run report.")
    parser.add_argument("--max-examples", type=int, default=50,
                        help="Generated cases per operation and phase (default: 50).")
    parser.add_argument("--seed", type=int, default=1, help="Random seed, for reproducible runs.")
    parser.add_argument("--exclude-operation-id", action="append", default=[],
                        help="An operation not to fuzz (e.g. a test model's fault injection).")
    args = parser.parse_args(argv)

    schema_url = args.url.rstrip("/") + "/openapi.json"
    with urllib.request.urlopen(schema_url, timeout=30) as response:
        document = json.load(response)
    validate(document)  # raises, naming the offending part, unless it is valid OpenAPI 3.1
    print(f"{schema_url}: valid OpenAPI {document['openapi']}, {len(document['paths'])} paths", flush=True)

    from schemathesis.cli import schemathesis as cli

    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "schemathesis.toml"
        config.write_text(CONFIG)
        command = ["--config-file", str(config), "run", schema_url, "--checks", "all", "--workers", "1",
                   "--max-examples", str(args.max_examples), "--seed", str(args.seed),
                   "--report", "json", "--report-json-path", args.report,
                   # A slow answer is not what the fuzzer looks for (a CPU Mask R-CNN on a busy
                   # machine takes 10 s): only one that never comes within the request timeout.
                   "--request-timeout", str(REQUEST_TIMEOUT), "--max-response-time", str(REQUEST_TIMEOUT)]
        for operation_id in args.exclude_operation_id:
            command += ["--exclude-operation-id", operation_id]
        return cli.main(command, prog_name="schemathesis", standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
