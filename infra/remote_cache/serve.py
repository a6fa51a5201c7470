"""Runs BuildGrid as the shared build cache: `./pants run infra/remote_cache:serve -- --help`.

Renders `buildgrid.yaml` (the config, beside this file) from the options below, starts BuildGrid's
server on it and keeps the CAS under `--max-size` (eviction.py). One process: stop it by its PID
(SIGTERM or SIGINT) and nothing is left running.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import string
import sys
import threading
from pathlib import Path

from remote_cache.access_token import TOKEN_ALGORITHM, read_secret
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
# With --token-secret: the subjects (a token's `sub`) that may write. CI on main, by convention.
DEFAULT_WRITERS = "ci-main"
# What a token that may only read may ask for (BuildGrid checks each RPC by its method's name):
# looking results up and fetching blobs. Everything else (UpdateActionResult, BatchUpdateBlobs,
# ByteStream Write) is a writer's.
READ_REQUESTS = ("GetCapabilities", "GetActionResult", "FindMissingBlobs", "BatchReadBlobs", "GetTree", "Read")
# Beside the rendered config in --data: who may read and write (BuildGrid's acl-config).
ACL_FILE = "acl.yaml"


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
    p.add_argument("--tls-cert", type=Path,
                   help="PEM certificate (with its chain) to serve TLS with, given with --tls-key. "
                        "Pants then uses ML_REMOTE_CACHE=grpcs://<host:port>, and "
                        "PANTS_REMOTE_CA_CERTS_PATH=<CA file> for a private CA. Without it the "
                        "cache speaks plain gRPC: keep it to a network you trust.")
    p.add_argument("--tls-key", type=Path, help="The private key (PEM) of --tls-cert.")
    p.add_argument("--token-secret", type=Path,
                   help="File holding the secret that signs access tokens "
                        f"({TOKEN_ALGORITHM} JWTs; `./pants run infra/remote_cache:token` issues "
                        "them): every RPC must then carry a valid, unexpired one (Pants: "
                        "PANTS_REMOTE_OAUTH_BEARER_TOKEN_PATH=<token file>). Without it anyone who "
                        "reaches the address reads and writes. Make one with `openssl rand -hex 32`.")
    p.add_argument("--writers",
                   help=f"With --token-secret: the token subjects that may write, a regular "
                        f"expression the whole subject must match (default {DEFAULT_WRITERS}); "
                        "every other valid token only reads.")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses, saying what to give, what BuildGrid would only fail on later or take silently."""
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together: give both (TLS) or neither (plain gRPC).")
    if args.writers is not None and args.token_secret is None:
        p.error("--writers needs --token-secret: without tokens everyone writes.")
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not path.is_file():
            p.error(f"{option} {path}: no such file.")
    if args.token_secret is not None:
        try:
            read_secret(args.token_secret)
        except ValueError as e:
            p.error(f"--token-secret {e}")
    if args.writers is not None:
        try:
            re.compile(args.writers)
        except re.error as e:
            p.error(f"--writers {args.writers!r} is not a regular expression: {e}.")


def _yaml_string(value: object) -> str:
    return json.dumps(str(value))  # a JSON string is a YAML string, quoted and escaped


def channel_security(args: argparse.Namespace) -> str:
    """The `!channel`'s TLS settings, indented as buildgrid.yaml places them."""
    if args.tls_cert is None:
        return "    insecure-mode: true"
    return ("    insecure-mode: false\n"
            "    credentials:\n"
            f"      tls-server-key: {_yaml_string(args.tls_key.resolve())}\n"
            f"      tls-server-cert: {_yaml_string(args.tls_cert.resolve())}")


def access_control(args: argparse.Namespace, acl_path: Path) -> str:
    """The config's `authorization` section, and the ACL it names written to `acl_path`: any
    valid token reads, the writers' also write. Empty without --token-secret (no checks)."""
    if args.token_secret is None:
        return ""
    writers = args.writers if args.writers is not None else DEFAULT_WRITERS
    # BuildGrid matches a subject from its start (re.match); \Z makes it the whole subject.
    acl = {args.instance: {"allow": [{"requests": list(READ_REQUESTS)}, {"subject": f"(?:{writers})\\Z"}]}}
    acl_path.write_text(json.dumps(acl, indent=2) + "\n")  # JSON is YAML
    return ("authorization:\n"
            "  method: jwt\n"
            f"  algorithm: {TOKEN_ALGORITHM.lower()}\n"
            f"  secret: {_yaml_string(args.token_secret.resolve())}\n"
            f"  acl-config: {_yaml_string(acl_path.resolve())}\n")


def render_config(args: argparse.Namespace, config_path: Path) -> Path:
    text = string.Template(CONFIG_TEMPLATE.read_text()).substitute(
        address=args.address,
        cas_dir=str(args.data.resolve()),
        max_actions=args.max_actions,
        instance=f'"{args.instance}"',
        max_rpcs=args.max_rpcs,
        channel_security=channel_security(args),
        authorization=access_control(args, config_path.with_name(ACL_FILE)),
    )
    config_path.write_text(text)
    return config_path


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    check_args(p, args)
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
    scheme = "grpc" if args.tls_cert is None else "grpcs"
    if args.token_secret is not None and args.tls_cert is None:
        print("remote cache: tokens over plain gRPC can be read by anyone on the network between a "
              "client and here: add --tls-cert and --tls-key off this machine", file=sys.stderr, flush=True)
    tokens = "" if args.token_secret is None else ", tokens required"
    print(f"remote cache: {scheme}://{args.address}{tokens}, blobs in {args.data} "
          f"(at most {args.max_size:,} bytes)", file=sys.stderr, flush=True)
    from buildgrid.server.app.cli import cli  # BuildGrid's own `bgd` command

    try:
        cli.main(["server", "start", str(config)], prog_name="bgd", standalone_mode=False)
    finally:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
