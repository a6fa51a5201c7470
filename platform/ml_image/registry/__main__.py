"""The registry client's command line: `python -m ml_image.registry push|pull ...`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from ml_image.registry.auth import Auth, PASSWORD_ENV, USERNAME_ENV
from ml_image.registry.errors import RegistryError
from ml_image.registry.reference import Reference
from ml_image.registry.publish import publish
from ml_image.registry.remote import pull, PullResult, PushResult


def _cli_auth(args: argparse.Namespace, registry: str, parser: argparse.ArgumentParser) -> Auth:
    if args.password_stdin and not args.username:
        parser.error("--password-stdin needs --username")
    if args.username:
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        elif os.environ.get(PASSWORD_ENV) is not None:
            password = os.environ[PASSWORD_ENV]
        else:
            parser.error(f"--username needs --password-stdin (or {PASSWORD_ENV})")
        return Auth(args.username, password)
    return Auth.for_registry(registry, "ecr" if args.ecr else "auto")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_image.registry", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    push_p = sub.add_parser("push", help="push an OCI image layout to registry/repository:tag")
    push_p.add_argument("layout", type=Path)
    push_p.add_argument("reference")
    push_p.add_argument("--mount-from", action="append", default=None, metavar="REPOSITORY",
                        help="a repository of the same registry to mount missing blobs from")
    push_p.add_argument("--create-ecr-repository", action="store_true",
                        help="create the ECR repository first if it does not exist (boto3); always done "
                             "for ECR hosts, this is for registries fronted by ECR")
    pull_p = sub.add_parser("pull", help="pull registry/repository:tag[@digest] into an OCI image layout")
    pull_p.add_argument("reference")
    pull_p.add_argument("dest", type=Path)
    pull_p.add_argument("--cache-dir", type=Path, help="content-addressed blob cache (blobs/sha256/<hex>)")
    pull_p.add_argument("--platform", default="linux/amd64", help="os/arch[/variant] to pick from an index")
    for p in (push_p, pull_p):
        p.add_argument("--username", help=f"with --password-stdin (or {PASSWORD_ENV}); default: "
                                          f"{USERNAME_ENV}/{PASSWORD_ENV}, ECR for ECR hosts, anonymous")
        p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        p.add_argument("--ecr", action="store_true", help="get credentials from Amazon ECR through boto3")
        transport = p.add_mutually_exclusive_group()
        transport.add_argument("--plain-http", dest="plain_http", action="store_const", const=True,
                               help="plain HTTP (loopback registries only; the default for them)")
        transport.add_argument("--https", dest="plain_http", action="store_const", const=False,
                               help="HTTPS even for a loopback registry")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds per network operation")
        p.add_argument("--quiet", action="store_true", help="no progress lines")
        p.add_argument("--result-file", type=Path,
                       help="also write the result (digest, blobs uploaded, bytes) to this JSON file: "
                            "what programs should read, rather than standard output")
    args = parser.parse_args(argv)
    try:
        ref = Reference.parse(args.reference)
        auth = _cli_auth(args, ref.registry, parser)
        if args.command == "push":
            result: Union[PushResult, PullResult] = publish(
                args.layout, ref, auth, create_ecr_repository=args.create_ecr_repository,
                plain_http=args.plain_http, mount_from=args.mount_from, timeout=args.timeout, quiet=args.quiet)
        else:
            result = pull(ref, args.dest, auth, cache_dir=args.cache_dir, platform=args.platform,
                          plain_http=args.plain_http, timeout=args.timeout, quiet=args.quiet)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = json.dumps(result.summary(), sort_keys=True)
    if args.result_file:
        args.result_file.write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
