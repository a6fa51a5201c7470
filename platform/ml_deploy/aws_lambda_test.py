"""The lambda driver against moto (AWS) and a real docker-registry (the image push).

Each test deploys a tiny image of its own to an empty moto account; the registry push is real,
authenticated with the token moto's ECR hands out, as `registry_auth: ecr` does.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest

from ml_contract.package_layout import LAMBDA_RESPONSE_STREAMING_ENV
from ml_deploy import alb, aws, aws_lambda
from ml_deploy.config import ConfigError, Environment
from ml_deploy.conftest import Deployer
from ml_deploy.plan import REPLACE, UNCHANGED, DeployFailed, execute
from ml_deploy.release import Release
from testutil.aws import (
    ECR_TOKEN_CREDENTIALS,
    alb_route,
    create_lambda_role,
    mutating,
    record_api_calls,
    with_load_balancer,
    write_test_image,
)
from ml_image.registry import Auth, RegistryClient
from testutil.registry import RunningRegistry
from testutil.strict_aws import StrictAws


@pytest.fixture
def environment(aws_environment: Environment) -> Environment:
    return dataclasses.replace(aws_environment, lambda_role=create_lambda_role(aws.session(aws_environment)))


@pytest.fixture
def deployer(request, tmp_path: Path, environment: Environment) -> Deployer:
    # A model (and so an image repository) per test: the registry outlives moto's resets.
    name = request.node.name.replace("test_", "", 1).replace("_", "-")[:30].rstrip("-")
    return Deployer(tmp_path, environment, {"name": name, "version": 1, "compute": "lambda", "memory": 512,
                                            "timeout": 30, "env": {"MODEL_FLAVOUR": "tiny"}})


def lambda_client(environment: Environment):
    return aws.client(environment, "lambda")


def alias_version(environment: Environment, function: str) -> str:
    return lambda_client(environment).get_alias(FunctionName=function, Name="live")["FunctionVersion"]


def test_first_deploy_creates_the_function_version_alias_and_url(deployer: Deployer,
                                                                 environment: Environment,
                                                                 registry: RunningRegistry) -> None:
    release = deployer.release("first")
    assert deployer.deploy(release) is True
    function = release.resource_name
    lam = lambda_client(environment)

    found = lam.get_function(FunctionName=function)
    configuration = found["Configuration"]
    assert configuration["PackageType"] == "Image"
    assert found["Code"]["ImageUri"] == f"{registry.host}/ml/{release.name}@{release.digest}"
    assert "@sha256:" in found["Code"]["ImageUri"]  # by digest, never by tag
    assert (configuration["MemorySize"], configuration["Timeout"]) == (512, 30)
    assert configuration["Environment"]["Variables"] == {"MODEL_FLAVOUR": "tiny",
                                                         "ML_MODEL_URL": "https://{model}.ml.localhost"}
    assert configuration["Role"] == environment.lambda_role
    assert found["Tags"]["ml.digest"] == release.digest
    assert found["Tags"]["ml.model"] == release.name and found["Tags"]["ml.version"] == "1"

    versions = {v["Version"]: v for v in lam.list_versions_by_function(FunctionName=function)["Versions"]}
    assert sorted(versions) == ["$LATEST", "1"]
    assert release.digest in versions["1"]["Description"]
    assert alias_version(environment, function) == "1"

    url = lam.get_function_url_config(FunctionName=function, Qualifier="live")
    assert url["AuthType"] == "AWS_IAM"
    assert f"deployed {release.digest}: {url['FunctionUrl']}" in deployer.text
    with pytest.raises(lam.exceptions.ResourceNotFoundException):  # AWS_IAM: no public permission
        lam.get_policy(FunctionName=function, Qualifier="live")

    groups = aws.client(environment, "logs").describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]
    assert [(g["logGroupName"], g.get("retentionInDays")) for g in groups] == [(f"/aws/lambda/{function}", 7)]
    # The image really is in the registry, pushed with moto's ECR token; the repository in ECR.
    RegistryClient(registry.host, f"ml/{release.name}", Auth(*ECR_TOKEN_CREDENTIALS)).get_manifest(release.digest)
    repositories = aws.client(environment, "ecr").describe_repositories()["repositories"]
    assert [r["repositoryName"] for r in repositories] == [f"ml/{release.name}"]


def test_deploying_the_live_digest_again_changes_nothing(deployer: Deployer, environment: Environment) -> None:
    release = deployer.release("same")
    deployer.deploy(release)
    calls = record_api_calls(aws.session(environment))  # before the plan creates its clients
    plan = deployer.plan(release)
    assert [s for s in plan.steps if s.action != UNCHANGED] == []
    assert deployer.deploy(release) is False
    assert "already live, no change (alias live -> version 1" in deployer.text
    assert calls and mutating(calls) == []
    assert alias_version(environment, release.resource_name) == "1"


def test_a_new_digest_publishes_version_2_and_moves_live(deployer: Deployer, environment: Environment,
                                                         registry: RunningRegistry) -> None:
    first, second = deployer.release("one"), deployer.release("two")
    assert first.digest != second.digest
    deployer.deploy(first)
    assert deployer.deploy(second) is True
    function, lam = second.resource_name, lambda_client(environment)
    alias = lam.get_alias(FunctionName=function, Name="live")
    assert alias["FunctionVersion"] == "2"
    assert "previous version 1" in alias["Description"]  # what a rollback moves back to
    assert lam.get_function(FunctionName=function)["Code"]["ImageUri"].endswith(f"@{second.digest}")
    versions = {v["Version"]: v["Description"] for v in lam.list_versions_by_function(FunctionName=function)["Versions"]}
    assert first.digest in versions["1"] and second.digest in versions["2"]
    assert lam.list_tags(Resource=lam.get_function(FunctionName=function)["Configuration"]["FunctionArn"])[
        "Tags"]["ml.digest"] == second.digest
    assert "update    Lambda alias" in deployer.text


def test_a_configuration_change_alone_publishes_a_version(deployer: Deployer, environment: Environment) -> None:
    deployer.deploy(deployer.release("config"))
    bigger = deployer.release("config", memory=1024)
    plan = deployer.plan(bigger)
    function_step = next(s for s in plan.steps if s.resource.startswith("Lambda function"))
    assert (function_step.action, function_step.detail) == ("update", "memory 512 -> 1024 MiB")
    execute(plan, say=lambda _: None)
    version = lambda_client(environment).get_function_configuration(FunctionName=bigger.resource_name,
                                                                   Qualifier="live")
    assert (version["Version"], version["MemorySize"]) == ("2", 1024)


def test_dry_run_prints_the_plan_and_makes_no_change(deployer: Deployer, environment: Environment,
                                                     registry: RunningRegistry) -> None:
    release = deployer.release("dry")
    calls = record_api_calls(aws.session(environment))
    assert deployer.deploy(release, dry_run=True) is False
    assert "plan (dry run, nothing was changed):" in deployer.text
    for line in (f"+ create    image {registry.host}/ml/{release.name}@{release.digest}",
                 f"+ create    Lambda function {release.resource_name}",
                 f"+ create    Lambda alias {release.resource_name}:live",
                 f"+ create    Function URL of {release.resource_name}:live: AuthType AWS_IAM"):
        assert line in deployer.text
    assert calls and mutating(calls) == []
    lam = lambda_client(environment)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName=release.resource_name)

    deployer.deploy(release)
    newer = deployer.release("drier")
    calls.clear()
    deployer.deploy(newer, dry_run=True)
    assert f"~ update    Lambda alias {release.resource_name}:live: version 1 -> the version published above" \
           in deployer.text
    assert mutating(calls) == []
    assert alias_version(environment, release.resource_name) == "1"


def test_a_failing_step_names_itself_and_leaves_the_previous_version_serving(
        deployer: Deployer, environment: Environment) -> None:
    first, second = deployer.release("good"), deployer.release("doomed")
    deployer.deploy(first)

    # The injected failure: botocore calls this before sending UpdateAlias, so the call fails
    # the way a refused AWS call would. Registered before the plan creates its clients, which
    # copy the session's handlers.
    def refuse(**_: object) -> None:
        raise RuntimeError("injected failure: UpdateAlias refused")

    events = aws.session(environment).events
    events.register("before-call.lambda.UpdateAlias", refuse)
    try:
        with pytest.raises(DeployFailed) as failed:
            deployer.deploy(second)
    finally:
        events.unregister("before-call.lambda.UpdateAlias", refuse)
    message = str(failed.value)
    function = first.resource_name
    assert f"update Lambda alias {function}:live failed: RuntimeError: injected failure" in message
    assert f"create Lambda version of {function}" in message  # what was done before it
    assert f"left in place: alias live -> version 1 ({first.digest})" in message
    assert alias_version(environment, function) == "1"

    # Re-run once the cause is gone: the version the failed run published is served, not re-published.
    plan = deployer.plan(second)
    version_step = next(s for s in plan.steps if s.resource.startswith("Lambda version"))
    assert (version_step.action, version_step.detail) == (UNCHANGED, "version 2 (published before)")
    execute(plan, say=lambda _: None)
    assert alias_version(environment, function) == "2"


def test_rollback_moves_live_back(deployer: Deployer, environment: Environment) -> None:
    first, second = deployer.release("old"), deployer.release("new")
    deployer.deploy(first)
    with pytest.raises(aws_lambda.NothingToRollBack, match="remembers no earlier version"):
        aws_lambda.plan_rollback(first.name, 1, environment)
    deployer.deploy(second)
    function, lam = first.resource_name, lambda_client(environment)

    output: List[str] = []
    assert execute(aws_lambda.plan_rollback(first.name, 1, environment), say=output.append) is True
    assert alias_version(environment, function) == "1"
    assert f"~ update    Lambda alias {function}:live: version 2 -> 1" in "\n".join(output)
    arn = lam.get_function(FunctionName=function)["Configuration"]["FunctionArn"]
    assert lam.list_tags(Resource=arn)["Tags"]["ml.digest"] == first.digest
    # The alias remembers the version it left: a second rollback undoes the first.
    execute(aws_lambda.plan_rollback(first.name, 1, environment), say=output.append)
    assert alias_version(environment, function) == "2"
    # Deploying the digest live before serves its version again: no new version.
    deployer.deploy(first)
    assert alias_version(environment, function) == "1"
    assert len(lam.list_versions_by_function(FunctionName=function)["Versions"]) == 3  # $LATEST, 1, 2


def test_rollback_of_a_model_never_deployed(environment: Environment) -> None:
    with pytest.raises(aws_lambda.NothingToRollBack, match="ml-nothing-v3 does not exist"):
        aws_lambda.plan_rollback("nothing", 3, environment)


def alias_statements(environment: Environment, function: str) -> Dict[str, Dict[str, Any]]:
    """The statements of alias live's resource policy, by Sid."""
    policy = lambda_client(environment).get_policy(FunctionName=function, Qualifier="live")["Policy"]
    return {st["Sid"]: st for st in json.loads(policy)["Statement"]}


def deploy_public(deployer: Deployer, environment: Environment, content: str) -> Release:
    """A release deployed with an AuthType NONE Function URL."""
    release = deployer.release(content)
    deployer.environment = dataclasses.replace(environment, function_url_auth="NONE")
    deployer.deploy(release)
    return release


def test_public_url_gets_the_invoke_permission_and_loses_it_again(deployer: Deployer,
                                                                 environment: Environment) -> None:
    release = deploy_public(deployer, environment, "public")
    function, lam = release.resource_name, lambda_client(environment)
    assert lam.get_function_url_config(FunctionName=function, Qualifier="live")["AuthType"] == "NONE"
    # Both statements AWS requires since October 2025; with the first alone the URL answers 403.
    # moto keeps the request's parameters (AWS turns them into the statements' Conditions) and
    # answers anyway: only a real account proves the 403; this proves what is asked for.
    statements = alias_statements(environment, function)
    assert set(statements) == {"FunctionURLAllowPublicAccess", "FunctionURLAllowInvokeAction"}, statements
    url, invoke = statements["FunctionURLAllowPublicAccess"], statements["FunctionURLAllowInvokeAction"]
    assert (url["Action"], url["Principal"], url["FunctionUrlAuthType"]) == ("lambda:InvokeFunctionUrl", "*", "NONE")
    assert (invoke["Action"], invoke["Principal"], invoke["InvokedViaFunctionUrl"]) == ("lambda:InvokeFunction", "*", True)

    deployer.environment = environment  # back to AWS_IAM
    plan = deployer.plan(release)
    assert [(s.action, s.resource) for s in plan.changes] == [
        ("update", f"Function URL of {function}:live"),
        ("delete", f"public invoke permission of {function}:live"),
    ]
    execute(plan, say=lambda _: None)
    assert lam.get_function_url_config(FunctionName=function, Qualifier="live")["AuthType"] == "AWS_IAM"
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_policy(FunctionName=function, Qualifier="live")


def test_a_public_url_with_the_invoke_url_statement_only_gets_the_other(deployer: Deployer,
                                                                      environment: Environment) -> None:
    """A function deployed before October 2025's rule (one statement) is completed, not left 403."""
    release = deploy_public(deployer, environment, "half-public")
    function, lam = release.resource_name, lambda_client(environment)
    lam.remove_permission(FunctionName=function, Qualifier="live", StatementId="FunctionURLAllowInvokeAction")
    plan = deployer.plan(release)
    assert [(s.action, s.resource) for s in plan.changes] == [("update", f"public invoke permission of {function}:live")]
    execute(plan, say=lambda _: None)
    assert sorted(alias_statements(environment, function)) == ["FunctionURLAllowInvokeAction",
                                                                "FunctionURLAllowPublicAccess"]
    assert deployer.plan(release).changes == []


def test_a_streaming_function_url_and_the_runtime_told_so(deployer: Deployer, environment: Environment) -> None:
    release = deployer.release("streams")
    deployer.environment = dataclasses.replace(environment, function_url_invoke_mode="RESPONSE_STREAM")
    deployer.deploy(release)
    function, lam = release.resource_name, lambda_client(environment)
    assert lam.get_function_url_config(FunctionName=function, Qualifier="live")["InvokeMode"] == "RESPONSE_STREAM"
    live = lam.get_function_configuration(FunctionName=function, Qualifier="live")
    assert live["Environment"]["Variables"][LAMBDA_RESPONSE_STREAMING_ENV] == "1"

    sent: Dict[str, Any] = {}

    def record(params: Dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "UpdateFunctionUrlConfig":
            sent.update(params)

    aws.session(environment).events.register("before-parameter-build.lambda", record)
    deployer.environment = environment  # back to BUFFERED: the URL and the runtime both change
    plan = deployer.plan(release)
    (url_step,) = [s for s in plan.changes if s.resource == f"Function URL of {function}:live"]
    assert url_step.detail == "InvokeMode RESPONSE_STREAM -> BUFFERED"
    execute(plan, say=lambda _: None)
    # moto's update keeps the old InvokeMode (AWS applies it): what was asked is checked.
    assert sent["InvokeMode"] == "BUFFERED" and sent["AuthType"] == "AWS_IAM"
    live = lam.get_function_configuration(FunctionName=function, Qualifier="live")
    assert LAMBDA_RESPONSE_STREAMING_ENV not in (live.get("Environment") or {}).get("Variables", {})


@pytest.mark.parametrize("settings, error", [
    ({"gpu": 1}, "Lambda has no GPUs"),
    ({"memory": 64}, "memory=64 MiB is outside Lambda's 128-10240 MiB"),
    ({"timeout": 901}, "timeout=901 s is outside Lambda's 1-900 s"),
])
def test_settings_lambda_cannot_run_fail_before_any_call(settings, error, tmp_path: Path) -> None:
    environment = Environment(name="test", registry="127.0.0.1:5000", lambda_role="arn:aws:iam::1:role/r")
    write_test_image(tmp_path / "image", b"x")
    release = Release.from_spec({"name": "m", "version": 1, "compute": "lambda", **settings}, tmp_path)
    with pytest.raises(ConfigError, match=error):
        aws_lambda.plan(release, environment)


def test_a_missing_lambda_role_names_the_setting(tmp_path: Path) -> None:
    write_test_image(tmp_path / "image", b"x")
    release = Release.from_spec({"name": "m", "version": 1, "compute": "lambda"}, tmp_path)
    with pytest.raises(ConfigError, match="needs lambda_role in the deploy environments file"):
        aws_lambda.plan(release, Environment(name="dev", registry="127.0.0.1:5000"))


# ---------------------------------------------------------------------------------------------
# AWS's rules that moto does not keep (testutil.strict_aws): what each test below proves, and
# what only a real account could.


def test_the_deploy_waits_out_pending_states_and_says_so(deployer: Deployer, strict_aws: StrictAws) -> None:
    """A new image function is Pending while Lambda optimises the image, and so is a published
    version; the deploy waits, saying how it stands. (Real timing, minutes for a multi-GB image,
    only a real account shows.)"""
    strict_aws.reads = 3
    release = deployer.release("patient")
    assert deployer.deploy(release) is True
    function = release.resource_name
    assert f"Lambda function {function}: state Pending" in deployer.text
    assert f"Lambda function {function}: state Active" in deployer.text
    assert f"Lambda function {function} version 1: state Pending" in deployer.text
    assert f"Lambda function {function} version 1: state Active" in deployer.text


def test_a_rerun_after_an_interrupted_deploy_waits_for_the_update_before_publishing(
        deployer: Deployer, environment: Environment, strict_aws: StrictAws) -> None:
    """An interrupted deploy left $LATEST updating (InProgress): publishing now is refused with
    ResourceConflictException, so the re-run waits for the update first."""
    first, second = deployer.release("before"), deployer.release("after")
    deployer.deploy(first)
    strict_aws.reads = 6  # the interrupted update is still under way when the re-run plans
    lam, function = lambda_client(environment), first.resource_name
    lam.update_function_code(FunctionName=function, ImageUri=second.image_uri(environment), Publish=False)
    plan = deployer.plan(second)
    fn_step = next(s for s in plan.steps if s.resource == f"Lambda function {function}")
    assert (fn_step.action, fn_step.detail) == (UNCHANGED, f"$LATEST already runs {second.digest}")
    execute(plan, say=deployer.output.append)
    assert f"Lambda function {function}: state Active, last update InProgress" in deployer.text
    assert alias_version(environment, function) == "2"


def test_a_function_whose_creation_failed_is_created_again(deployer: Deployer, environment: Environment,
                                                          strict_aws: StrictAws) -> None:
    """Lambda could not pull the image: the function is Failed and takes no update. The deploy
    says so; once the cause is fixed the re-run deletes and recreates it (nothing served)."""
    release = deployer.release("unlucky")
    function = release.resource_name
    strict_aws.fail_next_create(function, "ImageAccessDenied")
    with pytest.raises(DeployFailed) as failed:
        deployer.deploy(release)
    assert f"Lambda function {function} failed: state Failed" in str(failed.value)
    assert "ImageAccessDenied" in str(failed.value)
    assert "left in place: nothing served before this deploy" in str(failed.value)

    plan = deployer.plan(release)
    fn_step = next(s for s in plan.steps if s.resource == f"Lambda function {function}")
    assert fn_step.action == REPLACE and "its creation failed" in fn_step.detail
    execute(plan, say=deployer.output.append)
    assert alias_version(environment, function) == "1"
    assert lambda_client(environment).get_function(FunctionName=function)["Configuration"]["State"] == "Active"


def test_publish_refuses_a_function_someone_else_changed_meanwhile(deployer: Deployer, environment: Environment,
                                                                   strict_aws: StrictAws) -> None:
    """PublishVersion passes the RevisionId of the $LATEST it checked: a change slipped in
    between (another deploy) fails this one instead of publishing the other's code."""
    strict_aws.reads = 0
    first, second = deployer.release("mine"), deployer.release("mine-too")
    deployer.deploy(first)
    lam, function = lambda_client(environment), first.resource_name
    events = aws.session(environment).events
    slipped: List[str] = []

    def another_deploy(**_: object) -> None:
        if not slipped:
            slipped.append("yes")
            lam.update_function_configuration(FunctionName=function, MemorySize=1024)

    # First in line: the other change lands just before this PublishVersion is sent. Registered
    # before the plan makes its clients (they copy the session's handlers).
    events.register_first("before-call.lambda.PublishVersion", another_deploy)
    try:
        plan = deployer.plan(second)
        with pytest.raises(DeployFailed) as failed:
            execute(plan, say=deployer.output.append)
    finally:
        events.unregister("before-call.lambda.PublishVersion", another_deploy)
    assert "PreconditionFailedException" in str(failed.value)
    assert alias_version(environment, function) == "1"


def test_the_alias_moves_only_from_the_version_the_plan_saw(deployer: Deployer, environment: Environment,
                                                            strict_aws: StrictAws) -> None:
    """A rollback between this deploy's plan and its alias step wins: UpdateAlias passes the
    alias' RevisionId, so the deploy fails rather than undo the rollback unseen."""
    one, two, three = deployer.release("r1"), deployer.release("r2"), deployer.release("r3")
    deployer.deploy(one)
    deployer.deploy(two)
    plan = deployer.plan(three)
    execute(aws_lambda.plan_rollback(one.name, 1, environment), say=lambda _: None)  # live -> 1
    with pytest.raises(DeployFailed) as failed:
        execute(plan, say=deployer.output.append)
    assert "update Lambda alias" in str(failed.value) and "PreconditionFailedException" in str(failed.value)
    assert alias_version(environment, one.resource_name) == "1"


def test_lambda_may_pull_from_the_repository_and_old_builds_stay_tagged(
        deployer: Deployer, environment: Environment, registry: RunningRegistry) -> None:
    """Lambda pulls the image itself: the repository policy must allow lambda.amazonaws.com
    (strict_aws refuses CreateFunction otherwise, as AWS does). Scan on push and a lifecycle
    rule for untagged images only; each build keeps a tag of its own, so moving v1 to a new
    build leaves no digest a rollback needs untagged. (That the scan runs and the rule expires
    only a real account shows.)"""
    first, second = deployer.release("pull-1"), deployer.release("pull-2")
    deployer.deploy(first)
    ecr, repository = aws.client(environment, "ecr"), f"ml/{first.name}"
    (statement,) = json.loads(ecr.get_repository_policy(repositoryName=repository)["policyText"])["Statement"]
    assert statement["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert sorted(statement["Action"]) == ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    assert statement["Condition"]["StringLike"]["aws:sourceArn"].endswith(":function:ml-*")
    described = ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]
    assert described["imageScanningConfiguration"]["scanOnPush"] is True
    rules = json.loads(ecr.get_lifecycle_policy(repositoryName=repository)["lifecyclePolicyText"])["rules"]
    assert [r["selection"]["tagStatus"] for r in rules] == ["untagged"]

    deployer.deploy(second)
    client = RegistryClient(registry.host, repository, Auth(*ECR_TOKEN_CREDENTIALS))
    assert client.get_manifest(f"v1-{first.short_digest}") and client.get_manifest(f"v1-{second.short_digest}")
    assert deployer.plan(second).changes == []  # the repository settings are read back as set


@pytest.mark.parametrize("registry_host, error", [
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com", "is in us-east-1 and `region` is eu-west-1"),
    ("ghcr.io", "pulls images from Amazon ECR only"),
])
def test_a_registry_lambda_cannot_pull_from_fails_before_any_call(registry_host: str, error: str,
                                                                  tmp_path: Path) -> None:
    environment = Environment(name="prod", region="eu-west-1", registry=registry_host, lambda_role="arn:aws:iam::1:role/r")
    write_test_image(tmp_path / "image", b"x")
    release = Release.from_spec({"name": "m", "compute": "lambda"}, tmp_path)
    with pytest.raises(ConfigError, match=re.escape(error)):
        aws_lambda.plan(release, environment)


def test_a_lambda_model_answers_under_the_namespace_through_the_load_balancer(
        deployer: Deployer, environment: Environment) -> None:
    """With the environment's listener, <model>.ml.<domain>/v<N>/... reaches the function as it
    reaches every other compute: rules forward to a Lambda target group holding alias `live`.
    (That the ALB invokes it only a real account shows: moto routes nothing, alb_route reads
    the rules.)"""
    deployer.environment = with_load_balancer(environment)
    release = deployer.release("namespaced")
    assert deployer.deploy(release)
    function, elb = release.resource_name, aws.client(environment, "elbv2")
    (group,) = elb.describe_target_groups(Names=[alb.target_group_name(release)])["TargetGroups"]
    assert group["TargetType"] == "lambda"
    alias = lambda_client(environment).get_alias(FunctionName=function, Name="live")["AliasArn"]
    targets = [h["Target"]["Id"] for h in elb.describe_target_health(TargetGroupArn=group["TargetGroupArn"])["TargetHealthDescriptions"]]
    assert targets == [alias]
    invoke = alias_statements(environment, function)["ml-load-balancer-invoke"]
    assert invoke["Principal"] == {"Service": "elasticloadbalancing.amazonaws.com"}
    host = release.hostname(deployer.environment)
    session, listener = aws.session(environment), deployer.environment.listener
    for path in ("/v1/predict", "/v2/models/x/versions/1/infer", "/v2/health/ready"):
        assert alb_route(session, listener, host, path) == group["TargetGroupArn"], path
    assert deployer.plan(release).changes == []


def test_reserved_and_provisioned_concurrency(deployer: Deployer, environment: Environment,
                                              strict_aws: StrictAws) -> None:
    """Reserved concurrency on the function; provisioned on alias live, waited for until READY
    (strict_aws plays that API: moto has none). Unset again, the function scales to zero."""
    strict_aws.reads = 2
    release = deployer.release("concurrent", reserved_concurrency=10, provisioned_concurrency=2)
    assert deployer.deploy(release)
    function, lam = release.resource_name, lambda_client(environment)
    assert lam.get_function_concurrency(FunctionName=function)["ReservedConcurrentExecutions"] == 10
    config = lam.get_provisioned_concurrency_config(FunctionName=function, Qualifier="live")
    assert (config["RequestedProvisionedConcurrentExecutions"], config["Status"]) == (2, "READY")
    assert f"provisioned concurrency of {function}:live: IN_PROGRESS, 0 of 2 environments loaded" in deployer.text
    assert deployer.plan(release).changes == []

    plain = deployer.release("concurrent")
    plan = deployer.plan(plain)
    assert sorted(s.resource for s in plan.changes) == [f"provisioned concurrency of {function}:live",
                                                        f"reserved concurrency of {function}"]
    execute(plan, say=lambda _: None)
    with pytest.raises(lam.exceptions.ProvisionedConcurrencyConfigNotFoundException):
        lam.get_provisioned_concurrency_config(FunctionName=function, Qualifier="live")
