"""The fargate and ecs drivers against moto (AWS) and a real docker-registry (the image push).

Each test starts from an empty moto account holding only a VPC, an ALB listener and roles
(testing.with_load_balancer), and deploys tiny images of its own. moto records ECS, ELBv2 and
CloudWatch Logs state and runs nothing: no task starts, no health check happens. moto 5.2.5
also drops an ECS service's deploymentConfiguration (the circuit breaker), so that is checked
in the CreateService request instead of in the recorded service.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List

import pytest

from ml_deploy import alb, aws, ecs
from ml_deploy.config import ConfigError, Environment
from ml_deploy.conftest import Deployer
from ml_deploy.plan import CREATE, UNCHANGED, UPDATE, DeployFailed, execute
from ml_contract.package_layout import READY_PATH

from ml_deploy.release import Release
from testutil.aws import (
    ECR_TOKEN_CREDENTIALS,
    REGION,
    alb_route,
    create_capacity_provider,
    mutating,
    record_api_calls,
    record_api_params,
    with_load_balancer,
)
from ml_image.registry import Auth, RegistryClient
from testutil.registry import RunningRegistry
from testutil.strict_aws import StrictAws


@pytest.fixture
def environment(aws_environment: Environment) -> Environment:
    return with_load_balancer(aws_environment)


@pytest.fixture
def deployer(tmp_path: Path, environment: Environment) -> Deployer:
    return Deployer(tmp_path, environment, {"name": "iris", "version": 1, "compute": "fargate", "cpu": 0.5,
                                            "memory": 1024, "env": {"MODEL_FLAVOUR": "tiny"},
                                            "address": "models/iris:iris"})


def service(environment: Environment, release: Release) -> Dict[str, Any]:
    found = aws.client(environment, "ecs").describe_services(
        cluster=environment.cluster, services=[release.resource_name])["services"]
    assert len(found) == 1, found
    return found[0]


def task_definition(environment: Environment, arn: str) -> Dict[str, Any]:
    return aws.client(environment, "ecs").describe_task_definition(taskDefinition=arn)["taskDefinition"]


def rules(environment: Environment) -> List[Dict[str, Any]]:
    found = aws.client(environment, "elbv2").describe_rules(ListenerArn=environment.listener)["Rules"]
    return [r for r in found if not r["IsDefault"]]


def condition_values(rule: Dict[str, Any]) -> Dict[str, List[str]]:
    return {c["Field"]: c.get("HostHeaderConfig", c.get("PathPatternConfig", {})).get("Values") for c in rule["Conditions"]}


def test_fargate_deploy_records_task_definition_service_and_load_balancer(
        deployer: Deployer, environment: Environment, registry: RunningRegistry) -> None:
    release = deployer.release("one")
    params = record_api_params(aws.session(environment))
    plan = deployer.plan(release)
    assert plan.serving == "nothing (new service)"
    assert plan.url == "http://iris.ml.example.com/v1/"
    assert [s.action for s in plan.steps] == [CREATE] * 10 + [UNCHANGED]  # no autoscaling: 1 task, [s.describe() for s in plan.steps]
    assert execute(plan, say=deployer.output.append)
    assert f"deployed {release.digest}: http://iris.ml.example.com/v1/" in deployer.text

    # The image went to the registry, by digest.
    auth = Auth(*ECR_TOKEN_CREDENTIALS)
    assert RegistryClient(registry.host, "ml/iris", auth).get_manifest(release.digest)

    svc = service(environment, release)
    assert svc["status"] == "ACTIVE" and svc["launchType"] == "FARGATE" and svc["desiredCount"] == 1
    definition = task_definition(environment, svc["taskDefinition"])
    assert definition["family"] == "ml-iris-v1"
    assert definition["requiresCompatibilities"] == ["FARGATE"]
    assert definition["networkMode"] == "awsvpc"
    assert (definition["cpu"], definition["memory"]) == ("512", "1024")  # 0.5 vCPU * 1024 units
    assert definition["executionRoleArn"] == environment.execution_role
    (container,) = definition["containerDefinitions"]
    assert container["image"] == f"{registry.host}/ml/iris@{release.digest}"
    assert container["portMappings"][0]["containerPort"] == 8080
    assert container["environment"] == [{"name": "ML_MODEL_URL", "value": "https://{model}.ml.example.com"},
                                        {"name": "MODEL_FLAVOUR", "value": "tiny"}]
    assert container["logConfiguration"] == {"logDriver": "awslogs", "options": {
        "awslogs-group": "/ml/iris", "awslogs-region": REGION, "awslogs-stream-prefix": "v1"}}
    assert "resourceRequirements" not in container or not container["resourceRequirements"]

    logs = aws.client(environment, "logs").describe_log_groups(logGroupNamePrefix="/ml/iris")["logGroups"]
    assert [(g["logGroupName"], g.get("retentionInDays")) for g in logs] == [("/ml/iris", 7)]

    # Load balancer wiring: service -> target group (ip, 8080, readiness check) <- listener rule.
    elb = aws.client(environment, "elbv2")
    (group,) = elb.describe_target_groups(Names=["ml-iris-v1"])["TargetGroups"]
    assert (group["TargetType"], group["Port"], group["Protocol"], group["VpcId"]) == \
        ("ip", 8080, "HTTP", environment.vpc)
    assert group["HealthCheckPath"] == READY_PATH and group["Matcher"] == {"HttpCode": "200"}
    assert svc["loadBalancers"] == [{"targetGroupArn": group["TargetGroupArn"], "containerName": "model",
                                     "containerPort": 8080}]
    network = svc["networkConfiguration"]["awsvpcConfiguration"]
    assert sorted(network["subnets"]) == sorted(environment.subnets)
    assert network["securityGroups"] == list(environment.security_groups)
    # Its own paths, its Open Inference Protocol paths, and (the highest version) OIP's unversioned ones.
    assert sorted(tuple(condition_values(r)["path-pattern"]) for r in rules(environment)) == [
        ("/v1/*",), ("/v2", "/v2/health/*", "/v2/models/*"), ("/v2/models/*/versions/1", "/v2/models/*/versions/1/*")]
    for rule in rules(environment):
        assert condition_values(rule)["host-header"] == ["iris.ml.example.com"]
        assert rule["Actions"] == [{"Type": "forward", "TargetGroupArn": group["TargetGroupArn"]}]

    # moto accepts but does not keep the circuit breaker: it is checked in the request.
    (create,) = [p for op, p in params if op == "ecs.CreateService"]
    assert create["deploymentConfiguration"]["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
    assert create["launchType"] == "FARGATE"


def test_second_deploy_of_the_same_image_changes_nothing(deployer: Deployer, environment: Environment) -> None:
    release = deployer.release("same")
    assert deployer.deploy(release)
    calls = record_api_calls(aws.session(environment))
    plan = deployer.plan(release)
    assert {s.action for s in plan.steps} == {UNCHANGED}, [s.describe() for s in plan.steps]
    assert plan.serving == f"service ml-iris-v1 on task definition ml-iris-v1:1 ({release.digest})"
    assert execute(plan, say=deployer.output.append) is False
    assert "already live, no change (service ml-iris-v1 on task definition ml-iris-v1:1" in "\n".join(deployer.output)
    assert calls and mutating(calls) == []


def test_dry_run_only_reads(deployer: Deployer, environment: Environment) -> None:
    release = deployer.release("dry")
    calls = record_api_calls(aws.session(environment))
    assert deployer.deploy(release, dry_run=True) is False
    assert calls and mutating(calls) == [], mutating(calls)
    assert "plan (dry run, nothing was changed)" in deployer.text
    for line in ("+ create    ECS cluster ml-test", "+ create    ECS service ml-iris-v1",
                 "+ create    target group ml-iris-v1", "+ create    ECS task definition ml-iris-v1",
                 "+ create    listener rule iris.ml.example.com /v1/*"):
        assert line in deployer.text
    assert aws.client(environment, "ecs").describe_clusters(clusters=["ml-test"])["clusters"] == []

    # A dry run of an update reads only too, and names the image change.
    assert deployer.deploy(release)
    newer = deployer.release("dry-2")
    calls.clear()
    assert deployer.deploy(newer, dry_run=True) is False
    assert mutating(calls) == [], mutating(calls)
    assert f"image {release.digest} -> {newer.digest}" in deployer.text
    assert "~ update    ECS service ml-iris-v1: task definition ml-iris-v1:1 -> the new revision" in deployer.text


def test_two_versions_side_by_side(deployer: Deployer, environment: Environment) -> None:
    v1 = deployer.release("side-1", version=1)
    v2 = deployer.release("side-2", version=2)
    assert deployer.deploy(v1)
    assert deployer.deploy(v2)
    assert "http://iris.ml.example.com/v2/" in deployer.text
    s1, s2 = service(environment, v1), service(environment, v2)
    assert (s1["serviceName"], s2["serviceName"]) == ("ml-iris-v1", "ml-iris-v2")
    assert task_definition(environment, s1["taskDefinition"])["containerDefinitions"][0]["image"].endswith(v1.digest)
    assert task_definition(environment, s2["taskDefinition"])["containerDefinitions"][0]["image"].endswith(v2.digest)
    assert s1["loadBalancers"][0]["targetGroupArn"] != s2["loadBalancers"][0]["targetGroupArn"]

    by_path = {condition_values(r)["path-pattern"][0]: r for r in rules(environment)}
    assert by_path["/v1/*"]["Priority"] != by_path["/v2/*"]["Priority"]
    # The priority follows from the hostname and version alone.
    assert int(by_path["/v1/*"]["Priority"]) == alb.preferred_priority(v1, environment)
    # Where the ALB sends each path (its rule evaluation over the rules moto keeps). Version 2's
    # /v2/* must not capture the Open Inference Protocol's /v2/... paths of version 1.
    group1, group2 = s1["loadBalancers"][0]["targetGroupArn"], s2["loadBalancers"][0]["targetGroupArn"]
    routes = {path: alb_route(aws.session(environment), environment.listener, "iris.ml.example.com", path)
              for path in ("/v1/predict", "/v2/predict", "/v2/models/iris/versions/1/infer",
                           "/v2/models/iris/versions/2/infer", "/v2/models/iris/versions/1", "/v2/health/ready",
                           "/v2/models/iris", "/v2", "/v3/predict")}
    assert routes == {"/v1/predict": group1, "/v2/predict": group2, "/v2/models/iris/versions/1/infer": group1,
                      "/v2/models/iris/versions/2/infer": group2, "/v2/models/iris/versions/1": group1,
                      "/v2/health/ready": group2, "/v2/models/iris": group2, "/v2": group2, "/v3/predict": None}
    assert alb_route(aws.session(environment), environment.listener, "other.ml.example.com", "/v1/predict") is None

    # Version 1 again does not take the unversioned OIP paths back from version 2.
    assert deployer.plan(v1).changes == []

    # Deploying v1 again touches neither version.
    calls = record_api_calls(aws.session(environment))
    assert deployer.deploy(v1) is False
    assert mutating(calls) == []


def test_failed_update_leaves_the_previous_task_definition_serving(
        deployer: Deployer, environment: Environment) -> None:
    old, new = deployer.release("before"), deployer.release("after")
    assert deployer.deploy(old)
    session = aws.session(environment)

    def fail(**_: object) -> None:
        # The injected failure: ECS refusing the update, after the new revision was registered.
        raise RuntimeError("injected UpdateService failure")

    session.events.register("before-call.ecs.UpdateService", fail)
    try:
        with pytest.raises(DeployFailed) as failed:
            deployer.deploy(new)
    finally:
        session.events.unregister("before-call.ecs.UpdateService", fail)
    message = str(failed.value)
    assert "update ECS service ml-iris-v1 failed: RuntimeError: injected UpdateService failure" in message
    assert "update ECS task definition ml-iris-v1" in message  # done before it
    assert (f"left in place: service ml-iris-v1 on task definition ml-iris-v1:1 ({old.digest}) "
            f"(the previous version keeps serving)") in message
    assert service(environment, old)["taskDefinition"].endswith("/ml-iris-v1:1")

    # Once the cause is gone, the revision the failed deploy registered is reused, not registered again.
    plan = deployer.plan(new)
    actions = {s.resource: s.action for s in plan.steps}
    assert actions["ECS task definition ml-iris-v1"] == UNCHANGED
    assert actions["ECS service ml-iris-v1"] == UPDATE
    assert execute(plan, say=deployer.output.append)
    assert service(environment, new)["taskDefinition"].endswith("/ml-iris-v1:2")


def test_ecs_on_ec2_with_a_gpu(deployer: Deployer, environment: Environment) -> None:
    release = deployer.release("gpu", compute="ecs", gpu=1, cpu=4, memory=16384)
    plan = deployer.plan(release)
    (service_step,) = [s for s in plan.steps if s.resource == "ECS service ml-iris-v1"]
    assert "capacity provider ml-gpu, 1 task" in service_step.detail
    assert execute(plan, say=deployer.output.append)
    svc = service(environment, release)
    # The GPU capacity provider places it (its managed scaling starts a GPU instance for it):
    # with launch type EC2 capacity providers never scale, and the empty cluster never runs it.
    assert svc["capacityProviderStrategy"] == [{"capacityProvider": "ml-gpu", "weight": 1, "base": 0}]
    assert "launchType" not in svc
    cluster = aws.client(environment, "ecs").describe_clusters(clusters=[environment.cluster])["clusters"][0]
    assert cluster["capacityProviders"] == ["ml-gpu"]
    definition = task_definition(environment, svc["taskDefinition"])
    assert definition["requiresCompatibilities"] == ["EC2"] and definition["networkMode"] == "awsvpc"
    assert (definition["cpu"], definition["memory"]) == ("4096", "16384")
    assert definition["containerDefinitions"][0]["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    # ECS on EC2 has no public-IP setting for awsvpc tasks: none is sent.
    assert "assignPublicIp" not in svc["networkConfiguration"]["awsvpcConfiguration"]


def test_the_health_check_grace_is_the_models_load_timeout(deployer: Deployer, environment: Environment) -> None:
    session = aws.session(environment)
    sent: Dict[str, Any] = {}

    def record(params: Dict[str, Any], model: Any, **_: Any) -> None:
        if model.name in ("CreateService", "UpdateService"):
            sent[model.name] = params.get("healthCheckGracePeriodSeconds")

    session.events.register("before-parameter-build.ecs", record)
    release = deployer.release("slow", compute="ecs", gpu=1, cpu=4, memory=16384, load_timeout=420)
    assert deployer.deploy(release)
    assert sent == {"CreateService": 420}

    # moto keeps no grace period; ECS reports the one a service has: add it as ECS would.
    def report_grace(parsed: Dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "DescribeServices":
            for described in parsed.get("services", []):
                described.setdefault("healthCheckGracePeriodSeconds", 420)

    session.events.register("after-call.ecs", report_grace)
    try:
        slower = deployer.release("slow", compute="ecs", gpu=1, cpu=4, memory=16384, load_timeout=600)
        plan = deployer.plan(slower)
        (step,) = [s for s in plan.steps if s.resource == "ECS service ml-iris-v1"]
        assert step.action == UPDATE and "health-check grace 420 s -> 600 s" in step.detail
        assert execute(plan, say=deployer.output.append)
        assert sent == {"CreateService": 420, "UpdateService": 600}
    finally:
        session.events.unregister("after-call.ecs", report_grace)
        session.events.unregister("before-parameter-build.ecs", record)


def test_settings_are_checked_before_any_call(deployer: Deployer, environment: Environment) -> None:
    with pytest.raises(ConfigError, match=r"deploying iris v1 to fargate needs listener, execution_role"):
        ecs.plan(deployer.release("cfg"), dataclasses.replace(environment, listener=None, execution_role=None))
    with pytest.raises(ConfigError, match=r"models/iris:iris: Fargate has no GPUs"):
        ecs.plan(deployer.release("cfg", gpu=1), environment)
    with pytest.raises(ConfigError, match=r"cpu=0.5 with memory=512 MiB is not a Fargate task size"):
        ecs.plan(deployer.release("cfg", memory=512), environment)


# ---------------------------------------------------------------------------------------------
# Rollouts and capacity as AWS runs them (testutil.strict_aws walks each deployment's
# rolloutState; moto leaves it IN_PROGRESS). Only a real account shows tasks really placed,
# pulled and health-checked, and the real minutes that takes.


def test_the_deploy_waits_for_its_rollout_and_says_how_it_stands(deployer: Deployer, strict_aws: StrictAws) -> None:
    strict_aws.reads = 3
    release = deployer.release("rolled")
    assert deployer.deploy(release)
    assert "ECS service ml-iris-v1 deployment of ml-iris-v1:1: IN_PROGRESS, 0 of 1 tasks running" in deployer.text
    assert "ECS service ml-iris-v1 deployment of ml-iris-v1:1: COMPLETED, 1 of 1 tasks running" in deployer.text
    assert strict_aws.rollout("ml-iris-v1").state == "COMPLETED"
    assert deployer.text.index("COMPLETED, 1 of 1") < deployer.text.index(f"deployed {release.digest}")


def test_a_failed_rollout_says_why_and_what_serves(deployer: Deployer, environment: Environment,
                                                   strict_aws: StrictAws) -> None:
    """The circuit breaker fails the deployment after CI would have gone green: the deploy fails
    too, with the stopped task's reason, the service's events, and the revision serving again."""
    old, new = deployer.release("fine"), deployer.release("broken")
    deployer.deploy(old)
    strict_aws.next_rollout("ml-iris-v1", "FAILED", "CannotPullContainerError: pull access denied")
    with pytest.raises(DeployFailed) as failed:
        deployer.deploy(new)
    message = str(failed.value)
    assert "FAILED: ECS deployment circuit breaker: tasks failed to start." in message
    assert "stopped task stopped-1: CannotPullContainerError: pull access denied" in message
    assert "ECS: (service ml-iris-v1) rolling back to deployment" in message
    assert "the circuit breaker rolled the service back to ml-iris-v1:1, which serves" in message
    assert service(environment, old)["taskDefinition"].endswith("/ml-iris-v1:1")


def test_a_rollout_that_never_completes_fails_after_the_rollout_timeout(
        deployer: Deployer, environment: Environment, strict_aws: StrictAws) -> None:
    deployer.environment = dataclasses.replace(environment, rollout_timeout=0)
    strict_aws.next_rollout("ml-iris-v1", "STUCK")
    with pytest.raises(DeployFailed) as failed:
        deployer.deploy(deployer.release("stuck"))
    message = str(failed.value)
    assert "still IN_PROGRESS, 0 of 1 tasks running" in message
    assert "after 0 s (the environment's rollout_timeout" in message
    assert "ECS goes on trying to start the first task" in message


def test_gpu_tasks_with_a_launch_type_never_get_capacity(deployer: Deployer, environment: Environment,
                                                        strict_aws: StrictAws) -> None:
    """What the old driver did (launch type EC2 on a cluster of capacity providers) never gets
    placed; so an `ecs` model needs a capacity provider, named in the environment."""
    ecs_client = aws.client(environment, "ecs")
    release = deployer.release("gpu", compute="ecs", gpu=1, cpu=4, memory=16384)
    with pytest.raises(ConfigError, match=r"deploying iris v1 to ecs \(the Auto Scaling group its tasks are "
                                          r"placed on\) needs gpu_capacity_provider"):
        ecs.plan(release, dataclasses.replace(environment, gpu_capacity_provider=None))
    with pytest.raises(ConfigError, match="ECS capacity provider nowhere, which does not exist"):
        ecs.plan(release, dataclasses.replace(environment, gpu_capacity_provider="nowhere"))

    # The fake's rule, shown directly: a GPU task by launch type stays unplaced.
    ecs_client.create_cluster(clusterName="legacy")
    arn = ecs_client.register_task_definition(**ecs.task_definition(release, environment))["taskDefinition"]["taskDefinitionArn"]
    ecs_client.create_service(cluster="legacy", serviceName="old-style", taskDefinition=arn, desiredCount=1,
                              launchType="EC2")
    (described,) = ecs_client.describe_services(cluster="legacy", services=["old-style"])["services"]
    assert described["deployments"][0]["rolloutState"] == "IN_PROGRESS"
    assert "unable to place a task" in described["events"][0]["message"]


def test_an_existing_cluster_gets_the_capacity_provider_attached(deployer: Deployer, environment: Environment) -> None:
    ecs_client = aws.client(environment, "ecs")
    ecs_client.create_cluster(clusterName=environment.cluster, capacityProviders=["FARGATE"],
                              defaultCapacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1}])
    release = deployer.release("attach", compute="ecs", gpu=1, cpu=4, memory=16384)
    plan = deployer.plan(release)
    step = next(s for s in plan.steps if s.resource == f"ECS cluster {environment.cluster}")
    assert (step.action, step.detail) == (UPDATE, "attach capacity provider ml-gpu")
    assert execute(plan, say=deployer.output.append)
    cluster = ecs_client.describe_clusters(clusters=[environment.cluster])["clusters"][0]
    assert cluster["capacityProviders"] == ["FARGATE", "ml-gpu"]


def test_gpu_without_managed_scaling_replaces_the_task_in_place(deployer: Deployer, environment: Environment) -> None:
    """maximumPercent 200 needs a second free GPU for every rollout: without managed scaling to
    start one, the old task stops first, and the plan says so."""
    session = aws.session(environment)
    create_capacity_provider(session, "ml-gpu-fixed", managed_scaling=False)
    deployer.environment = dataclasses.replace(environment, gpu_capacity_provider="ml-gpu-fixed")
    params = record_api_params(session)
    release = deployer.release("fixed", compute="ecs", gpu=1, cpu=4, memory=16384)
    assert deployer.deploy(release)
    (sent,) = [p for call, p in params if call == "ecs.CreateService"]
    assert (sent["deploymentConfiguration"]["maximumPercent"], sent["deploymentConfiguration"]["minimumHealthyPercent"]) == (100, 0)
    assert sent["deploymentConfiguration"]["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
    plan = deployer.plan(deployer.release("fixed-2", compute="ecs", gpu=1, cpu=4, memory=16384))
    step = next(s for s in plan.steps if s.resource == "ECS service ml-iris-v1")
    assert "the old task stops before the new one starts" in step.detail


def test_autoscaling_between_the_models_replicas_on_its_request_target(deployer: Deployer,
                                                                       environment: Environment) -> None:
    """Application Auto Scaling target tracking on the load balancer's requests per target.
    (That tasks really come and go only a real account shows: moto records the policy.)"""
    release = deployer.release("scaled", min_replicas=2, max_replicas=6, target_requests=600)
    assert deployer.deploy(release)
    assert service(environment, release)["desiredCount"] == 2
    scaling = aws.client(environment, "application-autoscaling")
    resource_id = f"service/{environment.cluster}/ml-iris-v1"
    (target,) = scaling.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[resource_id])["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 6)
    (policy,) = scaling.describe_scaling_policies(ServiceNamespace="ecs", ResourceId=resource_id)["ScalingPolicies"]
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    group = service(environment, release)["loadBalancers"][0]["targetGroupArn"]
    assert config["TargetValue"] == 600.0
    metric = config["PredefinedMetricSpecification"]
    assert metric["PredefinedMetricType"] == "ALBRequestCountPerTarget"
    assert metric["ResourceLabel"].startswith("app/ml/") and metric["ResourceLabel"].endswith(
        "/" + group.rpartition(":")[2])
    assert deployer.plan(release).changes == []

    fixed = deployer.release("scaled", min_replicas=3)  # no max: autoscaling goes, 3 tasks stay
    plan = deployer.plan(fixed)
    assert {(s.action, s.resource, s.detail) for s in plan.changes} == {
        ("update", "ECS service ml-iris-v1", "tasks 2 -> 3"),
        ("delete", "autoscaling of ECS service ml-iris-v1", "the model declares 3 task(s), no max_replicas")}
    execute(plan, say=lambda _: None)
    assert service(environment, release)["desiredCount"] == 3
    assert scaling.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[resource_id])["ScalableTargets"] == []
