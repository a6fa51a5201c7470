"""Which driver deploys to which compute. Each driver module has
`plan(release, environment) -> Plan` (read-only calls only) and may have
`plan_rollback(name, version, environment) -> Plan`."""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

from ml_deploy.config import Environment
from ml_deploy.plan import Plan
from ml_deploy.release import Release

DRIVERS = {
    "local": "ml_deploy.local",
    "lambda": "ml_deploy.aws_lambda",
    "fargate": "ml_deploy.ecs",
    "ecs": "ml_deploy.ecs",
    "ec2": "ml_deploy.ec2",
}


def driver(compute: str) -> ModuleType:
    return importlib.import_module(DRIVERS[compute])


def placed(release: Release, environment: Environment) -> Release:
    """The release with the compute it runs on in `environment` (which may force one)."""
    compute = environment.compute or release.compute
    return dataclasses.replace(release, compute=compute) if compute != release.compute else release


def plan_deploy(release: Release, environment: Environment) -> Plan:
    release = placed(release, environment)
    return driver(release.compute).plan(release, environment)
