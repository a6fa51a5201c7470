#!/usr/bin/env python3
"""AWS deploys on the strict fakes (moto under testutil.strict_aws, a real docker-registry
playing ECR), per compute, side by side:

  first       a new model version: AWS API calls (all, and those that change something)
  unchanged   the same release again: calls, changing calls (target: 0, read-only)
  one change  a new image (a one-line model change): calls, changing calls
  waited      seconds the one-change deploy spent waiting on its rollout, and how many polls
              (each transitional state lasts --reads polls; --poll-seconds apart)

No AWS account is used: the figures count calls and polls, not AWS's own latency.

Usage: ./pants run bench/aws_deploys.py -- [--reads 3] [--poll-seconds 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from ml_deploy import aws
from ml_deploy.conftest import Deployer
from ml_deploy.config import Environment
from testutil.aws import ECR_TOKEN_CREDENTIALS, REGION, create_lambda_role, moto_server, mutating, with_load_balancer
from testutil.registry import start_registry
from testutil.strict_aws import StrictAws

MOTO_SERVER_PEX = Path("dist/tests/aws/moto-server.pex")  # ./pants package tests/aws:moto-server
MODELS = {
    "lambda": {"compute": "lambda", "memory": 1024, "timeout": 30},
    "fargate": {"compute": "fargate", "cpu": 1, "memory": 2048},
    "ecs (GPU)": {"compute": "ecs", "cpu": 4, "memory": 16384, "gpu": 1},
    "ec2": {"compute": "ec2", "cpu": 2, "memory": 3072},
}


def measure(root: Path, environment: Environment, strict: StrictAws, name: str,
            settings: Dict[str, object]) -> List[Tuple[str, int, int, str]]:
    deployer = Deployer(root / name.split()[0], environment, {"name": f"bench-{name.split()[0]}", **settings})
    rows = []
    for label, content in (("first", "one"), ("unchanged", "one"), ("one change", "two")):
        strict.calls.clear()
        started = time.monotonic()
        deployer.deploy(deployer.release(content))
        elapsed = time.monotonic() - started
        calls = [c for c in strict.calls if not c.startswith("sts.")]
        polls = sum(1 for line in deployer.output if line.lstrip().startswith(("Lambda function", "ECS service")))
        rows.append((label, len(calls), len(mutating(calls)), f"{elapsed:.1f} s, {polls} progress lines"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3, help="polls each transitional state lasts")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="the environment's poll_seconds")
    args = parser.parse_args()
    if not MOTO_SERVER_PEX.exists():
        raise SystemExit(f"{MOTO_SERVER_PEX} is missing: run ./pants package tests/aws:moto-server first")
    with tempfile.TemporaryDirectory(prefix="bench-aws-") as scratch:
        root = Path(scratch)
        (root / "moto").mkdir()
        username, password = ECR_TOKEN_CREDENTIALS
        moto = moto_server(root / "moto", pex=MOTO_SERVER_PEX)
        server = next(moto)
        try:
            with start_registry(root / "registry", username=username, password=password) as registry:
                base = Environment(name="bench", region=REGION, endpoint_url=server.endpoint, registry=registry.host,
                                   registry_auth="ecr", poll_seconds=args.poll_seconds)
                environment = with_load_balancer(base)
                environment = dataclasses.replace(environment, lambda_role=create_lambda_role(aws.session(environment)))
                strict = StrictAws(aws.session(environment), reads=args.reads).install()
                try:
                    print("| compute | deploy | API calls | of them changing | wall, waiting |")
                    print("| --- | --- | ---: | ---: | --- |")
                    for name, settings in MODELS.items():
                        for label, calls, changing, waited in measure(root, environment, strict, name, settings):
                            print(f"| {name} | {label} | {calls} | {changing} | {waited} |", flush=True)
                finally:
                    strict.uninstall()
        finally:
            moto.close()


if __name__ == "__main__":
    main()
