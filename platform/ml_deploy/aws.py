"""boto3 for the AWS drivers: one session per environment, errors as plain messages."""

from __future__ import annotations

import functools
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Tuple

from ml_deploy.config import Environment

if TYPE_CHECKING:
    from ml_deploy.plan import Plan


@functools.lru_cache(maxsize=None)
def _session(region: str, endpoint_url: str) -> Any:
    import boto3  # the tools' resolve; only AWS deploys need it

    if endpoint_url:
        # boto3 (>= 1.28) sends every client here; the registry client's ECR calls included.
        os.environ["AWS_ENDPOINT_URL"] = endpoint_url
    return boto3.session.Session(region_name=region or None)


def session(environment: Environment) -> Any:
    return _session(environment.region or "", environment.endpoint_url or "")


def client(environment: Environment, service: str) -> Any:
    return session(environment).client(service)


def error_code(error: BaseException) -> str:
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    response = getattr(error, "response", None) or {}
    return str((response.get("Error") or {}).get("Code", ""))


def plan_log_group(plan: "Plan", environment: Environment, name: str) -> None:
    """CloudWatch Logs group `name` with the environment's retention, created if missing."""
    from ml_deploy.plan import CREATE, UNCHANGED

    logs = client(environment, "logs")
    groups = logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
    if any(g["logGroupName"] == name for g in groups):
        plan.add(UNCHANGED, f"log group {name}")
        return

    def create() -> None:
        try:
            logs.create_log_group(logGroupName=name, tags={"ml.platform": "true"})
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        logs.put_retention_policy(logGroupName=name, retentionInDays=environment.log_retention_days)

    plan.add(CREATE, f"log group {name}", f"retention {environment.log_retention_days} days", create)


class RolloutTimedOut(RuntimeError):
    """A wait outlived the environment's rollout_timeout."""


def wait_for(what: str, read: Callable[[], Tuple[bool, str]], environment: Environment,
             say: Callable[[str], None]) -> str:
    """Poll `read` (done?, how it stands now) every `poll_seconds` until done, saying each new
    state (and every minute that it stays), for at most `rollout_timeout` seconds. `read` raises
    when what it waits for failed. Returns the last state."""
    start = time.monotonic()
    said, said_at = "", start
    while True:
        done, status = read()
        now = time.monotonic()
        if status != said or now - said_at >= 60:
            say(f"{what}: {status} ({now - start:.0f} s)")
            said, said_at = status, now
        if done:
            return status
        if now - start >= environment.rollout_timeout:
            raise RolloutTimedOut(
                f"{what}: still {status} after {environment.rollout_timeout} s (the environment's "
                f"rollout_timeout; raise it for models that take longer to start)")
        time.sleep(environment.poll_seconds)
