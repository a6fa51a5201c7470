"""boto3 for the AWS drivers: one session per environment, errors as plain messages."""

from __future__ import annotations

import functools
import os
from typing import Any

from ml_deploy.config import Environment


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
