"""What the AWS drivers share: the environment boto3 gets, and waiting on a rollout."""

from __future__ import annotations

import inspect
import re
from typing import List, Tuple

import pytest

from ml_contract.aws_env import AWS_ENV, AWS_SECRET_ENV
from ml_deploy import aws
from ml_deploy.config import Environment


def test_every_variable_botocores_credential_chain_reads_reaches_the_tools() -> None:
    """Pants runs the tools with a clean environment: a variable botocore reads for credentials
    and is not handed on fails only in the CI that uses it (web identity in GitHub Actions,
    container credentials in CodeBuild...). Read off botocore itself, so a new one shows."""
    import botocore.credentials  # pants: no-infer-dep (botocore comes with boto3)

    read = set(re.findall(r"['\"](AWS_[A-Z0-9_]+)['\"]", inspect.getsource(botocore.credentials)))
    assert read and read - set(AWS_ENV) == set(), sorted(read - set(AWS_ENV))
    for name in ("AWS_CA_BUNDLE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        assert name in AWS_ENV
    assert set(AWS_SECRET_ENV) <= set(AWS_ENV)


def test_a_wait_says_each_new_state_and_ends_when_done() -> None:
    states = iter([(False, "Pending"), (False, "Pending"), (False, "InProgress"), (True, "Active")])
    said: List[str] = []
    environment = Environment(name="t", poll_seconds=0)
    assert aws.wait_for("function f", lambda: next(states), environment, said.append) == "Active"
    assert [line.split(" (")[0] for line in said] == ["function f: Pending", "function f: InProgress",
                                                      "function f: Active"]


def test_a_wait_is_bounded_by_the_rollout_timeout() -> None:
    environment = Environment(name="t", poll_seconds=0.01, rollout_timeout=0)

    def never() -> Tuple[bool, str]:
        return False, "IN_PROGRESS"

    with pytest.raises(aws.RolloutTimedOut, match=r"function f: still IN_PROGRESS after 0 s \(the "
                                                  r"environment's rollout_timeout"):
        aws.wait_for("function f", never, environment, lambda _: None)
