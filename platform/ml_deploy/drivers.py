"""Which driver deploys to which compute. Each driver module has
`plan(release, environment) -> Plan` (read-only calls only) and may have
`plan_rollback(name, version, environment) -> Plan`."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Optional

from ml_contract.model_settings import Compute

from ml_deploy.config import Environment
from ml_deploy.plan import Plan
from ml_deploy.release import Release

# One driver module per compute of ml_contract' table (drivers_test checks that none is missing).
DRIVERS = {
    Compute.LOCAL: "ml_deploy.local",
    Compute.LAMBDA: "ml_deploy.aws_lambda",
    Compute.FARGATE: "ml_deploy.ecs",
    Compute.ECS: "ml_deploy.ecs",
    Compute.EC2: "ml_deploy.ec2",
}


def driver(compute: str) -> ModuleType:
    return importlib.import_module(DRIVERS[Compute(compute)])


def placed(release: Release, environment: Environment) -> Release:
    """The release with the compute it runs on in `environment` (which may force one)."""
    compute = environment.compute or release.compute
    return release.placed(compute) if compute != release.compute else release


def plan_deploy(release: Release, environment: Environment, gateway_pex: Optional[Path] = None) -> Plan:
    """`gateway_pex`: the local gateway's build, which only the local driver runs."""
    release = placed(release, environment)
    if Compute(release.compute) == Compute.LOCAL:
        return driver(release.compute).plan(release, environment, gateway_pex)
    return driver(release.compute).plan(release, environment)
