"""Retiring a model version (retire.py) against moto and the rules of testutil.strict_aws.
CloudWatch's request counts are put by the test (moto's load balancer serves nothing): that the
counts are AWS's own only a real account shows."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from ml_deploy import alb, aws
from ml_deploy.config import ConfigError, Environment
from ml_deploy.conftest import Deployer
from ml_deploy.plan import DELETE, UPDATE, execute
from ml_deploy.retire import plan_retire
from testutil.aws import alb_route, create_lambda_role, mutating, record_api_calls, with_load_balancer


@pytest.fixture
def environment(aws_environment: Environment) -> Environment:
    return with_load_balancer(aws_environment)


@pytest.fixture
def deployer(tmp_path: Path, environment: Environment) -> Deployer:
    return Deployer(tmp_path, environment, {"name": "iris", "compute": "fargate", "cpu": 0.5, "memory": 1024})


def test_retiring_version_1_leaves_version_2_serving_every_route(deployer: Deployer, environment: Environment) -> None:
    v1, v2 = deployer.release("r1", version=1), deployer.release("r2", version=2)
    deployer.deploy(v2)
    deployer.deploy(v1)  # v2 keeps OIP's unversioned paths: it is the higher one
    session = aws.session(environment)
    calls = record_api_calls(session)
    plan = plan_retire("iris", 1, "fargate", environment)
    assert mutating(calls) == []  # the plan only reads
    assert [(s.action, s.resource) for s in plan.changes] == [
        (DELETE, "listener rule iris.ml.example.com /v1/*"),
        (DELETE, "listener rule iris.ml.example.com /v2/models/*/versions/1, /v2/models/*/versions/1/*"),
        (DELETE, "ECS service ml-iris-v1"),
        (DELETE, "target group ml-iris-v1")]
    output: list = []
    execute(plan, say=output.append)
    assert output[-1] == "  retired iris v1"
    ecs = aws.client(environment, "ecs")
    (gone,) = ecs.describe_services(cluster=environment.cluster, services=["ml-iris-v1"])["services"]
    assert gone["status"] != "ACTIVE"
    group2 = aws.client(environment, "elbv2").describe_target_groups(Names=["ml-iris-v2"])["TargetGroups"][0]["TargetGroupArn"]
    for path, group in (("/v1/predict", None), ("/v2/models/iris/versions/1/infer", group2), ("/v2/predict", group2),
                        ("/v2/health/ready", group2)):
        assert alb_route(session, environment.listener, "iris.ml.example.com", path) == group, path
    with pytest.raises(aws.client(environment, "elbv2").exceptions.TargetGroupNotFoundException):
        aws.client(environment, "elbv2").describe_target_groups(Names=["ml-iris-v1"])
    assert deployer.plan(v2).changes == []  # what is left is exactly what v2's deploy wants


def test_retiring_the_highest_version_moves_the_unversioned_oip_paths_down(deployer: Deployer,
                                                                           environment: Environment) -> None:
    deployer.deploy(deployer.release("h1", version=1))
    deployer.deploy(deployer.release("h2", version=2))
    plan = plan_retire("iris", 2, "fargate", environment)
    (move,) = [s for s in plan.changes if s.action == UPDATE]
    assert move.detail == "forward to version 1 (the highest left)"
    execute(plan, say=lambda _: None)
    group1 = aws.client(environment, "elbv2").describe_target_groups(Names=["ml-iris-v1"])["TargetGroups"][0]["TargetGroupArn"]
    assert alb_route(aws.session(environment), environment.listener, "iris.ml.example.com", "/v2/health/ready") == group1


def test_a_version_with_recent_requests_is_refused_unless_forced(deployer: Deployer, environment: Environment) -> None:
    deployer.deploy(deployer.release("busy"))
    elb = aws.client(environment, "elbv2")
    group = elb.describe_target_groups(Names=[alb.target_group_name(deployer.release("busy"))])["TargetGroups"][0]
    balancer = elb.describe_listeners(ListenerArns=[environment.listener])["Listeners"][0]["LoadBalancerArn"]
    aws.client(environment, "cloudwatch").put_metric_data(Namespace="AWS/ApplicationELB", MetricData=[{
        "MetricName": "RequestCount", "Value": 42, "Unit": "Count",
        "Timestamp": datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5),
        "Dimensions": [{"Name": "TargetGroup", "Value": group["TargetGroupArn"].rpartition(":")[2]},
                       {"Name": "LoadBalancer", "Value": balancer.partition(":loadbalancer/")[2]}]}])
    with pytest.raises(ConfigError, match=r"served 42 requests in the last 60 minutes: its clients still call it"):
        plan_retire("iris", 1, "fargate", environment)
    assert plan_retire("iris", 1, "fargate", environment, force=True).changes


def test_retiring_a_lambda_version_and_nothing_to_retire(tmp_path: Path, environment: Environment) -> None:
    import dataclasses

    environment = dataclasses.replace(environment, listener=None,
                                      lambda_role=create_lambda_role(aws.session(environment)))
    deployer = Deployer(tmp_path, environment, {"name": "iris", "compute": "lambda", "memory": 512, "timeout": 30})
    deployer.deploy(deployer.release("fn"))
    plan = plan_retire("iris", 1, "lambda", environment)
    assert [(s.action, s.resource) for s in plan.changes] == [(DELETE, "Lambda function ml-iris-v1")]
    execute(plan, say=lambda _: None)
    lam = aws.client(environment, "lambda")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName="ml-iris-v1")
    with pytest.raises(ConfigError, match="has nothing on lambda in environment 'test' to retire"):
        plan_retire("iris", 1, "lambda", environment)
