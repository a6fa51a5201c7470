"""Issues an access token for the shared build cache (serve.py --token-secret).

`./pants run infra/remote_cache:token -- --secret FILE --subject ci-main` prints one.

The token is a JWT signed with the cache's secret; its subject is who holds it, which the cache's
ACL turns into read-only or read-and-write (serve.py --writers). Pants sends it on every RPC from
the file PANTS_REMOTE_OAUTH_BEARER_TOKEN_PATH names.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# The one algorithm serve.py configures BuildGrid for, and the one tokens are signed with.
TOKEN_ALGORITHM = "HS256"
# RFC 7518 (3.2): an HS256 key has at least as many bytes as its hash.
MIN_SECRET_BYTES = 32
DEFAULT_DAYS = 90.0


def read_secret(path: Path) -> str:
    """The secret in `path` as BuildGrid reads it (stripped); ValueError saying how to fix it."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file.")
    secret = path.read_text().strip()
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"{path} holds {len(secret.encode())} bytes: write a secret of "
                         f"{MIN_SECRET_BYTES} or more into it (`openssl rand -hex 32 > {path}`).")
    return secret


def issue(secret: str, subject: str, days: float, now: float | None = None) -> str:
    import jwt  # pants: no-infer-dep (PyJWT: BuildGrid requires it, to check tokens)

    issued = int(time.time() if now is None else now)
    claims = {"sub": subject, "iat": issued, "exp": issued + int(days * 86400)}
    return jwt.encode(claims, secret, algorithm=TOKEN_ALGORITHM)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="token", description=__doc__.splitlines()[0])
    p.add_argument("--secret", type=Path, required=True,
                   help="The file the cache's --token-secret names (keep it with the cache).")
    p.add_argument("--subject", required=True,
                   help="Who holds the token, e.g. ci-main, ci-pull-requests or a developer's "
                        "name: writers are the subjects the cache's --writers matches.")
    p.add_argument("--days", type=float, default=DEFAULT_DAYS,
                   help=f"How long the token is valid (default {DEFAULT_DAYS:g} days); the cache "
                        "refuses it afterwards.")
    p.add_argument("--out", type=Path,
                   help="Write the token to this file (mode 600) instead of printing it.")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.days <= 0:
        p.error(f"--days {args.days:g}: give a positive number of days.")
    try:
        secret = read_secret(args.secret)
    except ValueError as e:
        p.error(f"--secret {e}")
    token = issue(secret, args.subject, args.days)
    if args.out is None:
        print(token)
    else:
        args.out.touch(mode=0o600)
        args.out.write_text(token + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
