"""Runs BuildGrid as the shared build cache: `./pants run infra/remote_cache:serve -- --help`.

Renders `buildgrid.yaml` (the config, beside this file) from the options below, starts BuildGrid's
server on it and keeps the CAS under `--max-size` (eviction.py). One process: stop it by its PID
(SIGTERM or SIGINT) and nothing is left running.
"""

from __future__ import annotations

import argparse
import logging
import re
import string
import sys
import threading
from pathlib import Path

from remote_cache.eviction import keep_bounded

CONFIG_TEMPLATE = Path(__file__).with_name("buildgrid.yaml")
DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_MAX_SIZE = "50G"
DEFAULT_MAX_ACTIONS = 500_000
DEFAULT_SWEEP_SECONDS = 60.0
# Pants 2.17's defaults: remote_store_rpc_concurrency 128 + remote_cache_rpc_concurrency 128.
PANTS_RPCS_PER_CLIENT = 256
DEFAULT_MAX_RPCS = 4 * PANTS_RPCS_PER_CLIENT
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:iB|B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: write e.g. 500M, 50G or 2T")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="serve",
        description="The shared build cache (REAPI: CAS + action cache) for Pants, on BuildGrid.",
    )
    p.add_argument("--data", type=Path, required=True,
                   help="Folder for the cache's blobs (the CAS); kept across restarts. Give it a "
                        "disk with --max-size and some room to spare.")
    p.add_argument("--address", default=DEFAULT_ADDRESS,
                   help=f"host:port to listen on (default {DEFAULT_ADDRESS}); Pants then uses "
                        "ML_REMOTE_CACHE=grpc://<host:port>.")
    p.add_argument("--max-size", type=parse_size, default=parse_size(DEFAULT_MAX_SIZE),
                   help=f"Bound on the blobs' total size (default {DEFAULT_MAX_SIZE}); past it the "
                        "least recently used are evicted.")
    p.add_argument("--max-actions", type=int, default=DEFAULT_MAX_ACTIONS,
                   help=f"Action results kept in memory (default {DEFAULT_MAX_ACTIONS:,}), least "
                        "recently used evicted first; about 1 KB each.")
    p.add_argument("--sweep-seconds", type=float, default=DEFAULT_SWEEP_SECONDS,
                   help=f"How often the size bound is checked (default {DEFAULT_SWEEP_SECONDS:g} s).")
    p.add_argument("--instance", default="",
                   help="REAPI instance name (default: the default instance, which Pants asks for "
                        "unless [GLOBAL].remote_instance_name is set).")
    p.add_argument("--max-rpcs", type=int, default=DEFAULT_MAX_RPCS,
                   help=f"RPCs served at once, a thread each, started as needed (default "
                        f"{DEFAULT_MAX_RPCS}; BuildGrid's minimum is 5). gRPC refuses more with "
                        "RESOURCE_EXHAUSTED, and Pants then builds what it looked up itself. One "
                        f"Pants run opens up to {PANTS_RPCS_PER_CLIENT} at once (its "
                        "remote_store_rpc_concurrency + remote_cache_rpc_concurrency): give this "
                        "that times the builds running at the same time.")
    return p


def render_config(args: argparse.Namespace, config_path: Path) -> Path:
    text = string.Template(CONFIG_TEMPLATE.read_text()).substitute(
        address=args.address,
        cas_dir=str(args.data.resolve()),
        max_actions=args.max_actions,
        instance=f'"{args.instance}"',
        max_rpcs=args.max_rpcs,
    )
    config_path.write_text(text)
    return config_path


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.data.mkdir(parents=True, exist_ok=True)
    config = render_config(args, args.data / "buildgrid.yaml")
    stop = threading.Event()
    threading.Thread(
        target=keep_bounded,
        args=(args.data, args.max_size, args.sweep_seconds, stop),
        name="cas-eviction",
        daemon=True,
    ).start()
    print(f"remote cache: grpc://{args.address}, blobs in {args.data} (at most {args.max_size:,} bytes)",
          file=sys.stderr, flush=True)
    from buildgrid.server.app.cli import cli  # BuildGrid's own `bgd` command

    try:
        cli.main(["server", "start", str(config)], prog_name="bgd", standalone_mode=False)
    finally:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
