"""The ec2 driver against moto (AWS) and a real docker-registry (the image push).

moto records launch templates and their versions, instances (with their user data and tags)
and target registrations, and runs nothing: user data never executes, instances turn `running`
at the next describe and a registered target is `healthy` at once, so the waits return
immediately. What the instance would run is checked in its user data script instead.
"""

from __future__ import annotations

import base64
import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

from ml_deploy import aws, ec2
from ml_deploy.config import ConfigError, Environment
from ml_deploy.conftest import Deployer
from ml_deploy.plan import CREATE, REPLACE, UNCHANGED, UPDATE, DeployFailed, execute
from ml_deploy.release import Release
from testutil.aws import REGION, mutating, record_api_calls, with_load_balancer, write_test_image
from testutil.registry import RunningRegistry


@pytest.fixture
def environment(aws_environment: Environment) -> Environment:
    return with_load_balancer(aws_environment)


@pytest.fixture
def deployer(tmp_path: Path, environment: Environment) -> Deployer:
    return Deployer(tmp_path, environment, {"name": "iris", "version": 1, "compute": "ec2", "cpu": 1,
                                            "memory": 2048, "env": {"MODEL_FLAVOUR": "tiny one"}})


def instances(environment: Environment, release: Release, *states: str) -> List[Dict[str, Any]]:
    filters = [{"Name": "tag:ml.resource", "Values": [release.resource_name]}]
    if states:
        filters.append({"Name": "instance-state-name", "Values": list(states)})
    found = aws.client(environment, "ec2").describe_instances(Filters=filters)["Reservations"]
    return [i for r in found for i in r["Instances"]]


def tags(resource: Dict[str, Any]) -> Dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def targets(environment: Environment, release: Release) -> Dict[str, str]:
    elb = aws.client(environment, "elbv2")
    group = elb.describe_target_groups(Names=[release.resource_name])["TargetGroups"][0]
    health = elb.describe_target_health(TargetGroupArn=group["TargetGroupArn"])["TargetHealthDescriptions"]
    return {h["Target"]["Id"]: h["TargetHealth"]["State"] for h in health}


def template_user_data(environment: Environment, release: Release, version: str = "$Default") -> str:
    found = aws.client(environment, "ec2").describe_launch_template_versions(
        LaunchTemplateName=release.resource_name, Versions=[version])["LaunchTemplateVersions"][0]
    return base64.b64decode(found["LaunchTemplateData"]["UserData"]).decode()


def test_deploy_launches_a_tagged_instance_registered_in_the_target_group(
        deployer: Deployer, environment: Environment, registry: RunningRegistry) -> None:
    release = deployer.release("one")
    plan = deployer.plan(release)
    assert plan.serving == "nothing (new instance)"
    assert plan.url == "http://iris.ml.example.com/v1/"
    assert [s.action for s in plan.steps] == [CREATE] * 9, [s.describe() for s in plan.steps]
    assert execute(plan, say=deployer.output.append)
    # It waited for the instance, then for the ALB's health check, saying so.
    assert any(": running (" in line and "EC2 instance i-" in line for line in deployer.output), deployer.text
    assert any("in ml-iris-v1: healthy (" in line for line in deployer.output), deployer.text

    script = template_user_data(environment, release)
    image = f"{registry.host}/ml/iris@{release.digest}"
    assert f"image={image}\n" in script  # pulled and run by digest
    assert 'retry "$engine" pull "$image"' in script
    assert "--restart=always -p 8080:8080" in script and "--memory 2048m --cpus 1" in script
    assert "-e 'MODEL_FLAVOUR=tiny one'" in script
    # registry_auth ecr: the instance logs in with an ECR token it gets through its role.
    assert f"aws ecr get-login-password --region {REGION} | \"$engine\" login --username AWS " \
           f"--password-stdin {registry.host}" in script
    assert "--log-driver awslogs" in script and "awslogs-group=/ml/iris" in script
    assert "--gpus" not in script

    (instance,) = instances(environment, release)
    assert instance["State"]["Name"] == "running"
    assert instance["InstanceType"] == environment.instance_type == "t3.medium"
    assert instance["ImageId"] == environment.ami
    assert instance["SubnetId"] in environment.subnets
    labels = tags(instance)
    assert {k: labels[k] for k in ("ml.model", "ml.version", "ml.digest")} == \
        {"ml.model": "iris", "ml.version": "1", "ml.digest": release.digest}
    user_data = aws.client(environment, "ec2").describe_instance_attribute(
        InstanceId=instance["InstanceId"], Attribute="userData")["UserData"]["Value"]
    assert base64.b64decode(user_data).decode() == script  # launched from the template's version

    assert targets(environment, release) == {instance["InstanceId"]: "healthy"}
    elb = aws.client(environment, "elbv2")
    group = elb.describe_target_groups(Names=["ml-iris-v1"])["TargetGroups"][0]
    assert (group["TargetType"], group["Port"], group["HealthCheckPath"]) == ("instance", 8080, "/v2/health/ready")
    routed = [r for r in elb.describe_rules(ListenerArn=environment.listener)["Rules"] if not r["IsDefault"]]
    assert len(routed) == 3  # its paths, its OIP paths, OIP's unversioned paths
    for rule in routed:
        assert rule["Actions"] == [{"Type": "forward", "TargetGroupArn": group["TargetGroupArn"]}]
    assert f"{instance['InstanceId']} healthy in target group ml-iris-v1" in deployer.text


def test_an_update_replaces_the_instance(deployer: Deployer, environment: Environment) -> None:
    old, new = deployer.release("before"), deployer.release("after")
    assert deployer.deploy(old)
    (first,) = instances(environment, old)

    plan = deployer.plan(new)
    assert plan.serving == f"instance {first['InstanceId']} ({old.digest}) from launch template version 1"
    actions = {s.resource: s.action for s in plan.steps}
    assert actions["EC2 launch template ml-iris-v1"] == UPDATE
    assert actions["EC2 instance of ml-iris-v1"] == REPLACE
    assert execute(plan, say=deployer.output.append)

    (second,) = instances(environment, new, "running")
    assert second["InstanceId"] != first["InstanceId"]
    assert tags(second)["ml.digest"] == new.digest
    assert tags(second)["aws:ec2launchtemplate:version"] == "2"
    (gone,) = instances(environment, old, "terminated")
    assert gone["InstanceId"] == first["InstanceId"]
    assert targets(environment, new) == {second["InstanceId"]: "healthy"}

    template = aws.client(environment, "ec2").describe_launch_templates(
        LaunchTemplateNames=["ml-iris-v1"])["LaunchTemplates"][0]
    assert (template["DefaultVersionNumber"], template["LatestVersionNumber"]) == (2, 2)
    assert new.digest in template_user_data(environment, new)
    assert old.digest in template_user_data(environment, old, "1")


def test_second_deploy_changes_nothing_and_dry_run_only_reads(deployer: Deployer, environment: Environment) -> None:
    release = deployer.release("same")
    calls = record_api_calls(aws.session(environment))
    assert deployer.deploy(release, dry_run=True) is False
    assert calls and mutating(calls) == [], mutating(calls)
    assert "+ create    EC2 instance of ml-iris-v1" in deployer.text
    assert instances(environment, release) == []

    assert deployer.deploy(release)
    calls.clear()
    plan = deployer.plan(release)
    assert {s.action for s in plan.steps} == {UNCHANGED}, [s.describe() for s in plan.steps]
    assert execute(plan, say=deployer.output.append) is False
    assert "already live, no change (instance i-" in deployer.output[-2]
    assert calls and mutating(calls) == [], mutating(calls)


def test_a_new_instance_that_never_gets_healthy_is_terminated_and_the_old_one_serves(
        deployer: Deployer, environment: Environment) -> None:
    old, new = deployer.release("good"), deployer.release("broken")
    assert deployer.deploy(old)
    (first,) = instances(environment, old)
    session = aws.session(environment)
    armed: List[bool] = []

    def unhealthy(params: Dict[str, Any], **_: object) -> None:
        # The injected failure: the ALB's health check of the new instance never passes (moto
        # reports every target healthy at once). Armed after planning, which reads target health.
        if armed and params.get("Targets"):
            raise RuntimeError("injected: the target never became healthy")

    # Clients copy the session's handlers when they are made, and the plan makes its clients.
    session.events.register("before-parameter-build.elastic-load-balancing-v2.DescribeTargetHealth", unhealthy)
    try:
        plan = deployer.plan(new)
        armed.append(True)
        with pytest.raises(DeployFailed) as failed:
            execute(plan, say=deployer.output.append)
    finally:
        session.events.unregister("before-parameter-build.elastic-load-balancing-v2.DescribeTargetHealth",
                                  unhealthy)
    message = str(failed.value)
    assert "replace EC2 instance of ml-iris-v1 failed" in message
    assert "injected: the target never became healthy; the new instance i-" in message
    assert f"left in place: instance {first['InstanceId']} ({old.digest})" in message
    running = instances(environment, old, "pending", "running")
    assert [i["InstanceId"] for i in running] == [first["InstanceId"]]
    assert targets(environment, old) == {first["InstanceId"]: "healthy"}


def test_gpu_models_get_the_gpu_instance_type(deployer: Deployer, environment: Environment) -> None:
    release = deployer.release("gpu", gpu=1)
    assert deployer.deploy(release)
    (instance,) = instances(environment, release)
    assert instance["InstanceType"] == environment.gpu_instance_type == "g5.xlarge"
    script = template_user_data(environment, release)
    assert "gpus=(--gpus 1)" in script and '"${gpus[@]}"' in script


def test_settings_are_checked_before_any_call(deployer: Deployer, environment: Environment) -> None:
    with pytest.raises(ConfigError, match=r"deploying iris v1 to ec2 needs ami"):
        ec2.plan(deployer.release("cfg"), dataclasses.replace(environment, ami=None))
    with pytest.raises(ConfigError, match=r"pulls from ECR with its role\) needs instance_profile"):
        ec2.plan(deployer.release("cfg"), dataclasses.replace(environment, instance_profile=None))


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_user_data_pulls_by_digest_and_runs_the_image(tmp_path: Path, engine: str) -> None:
    """The script itself, run by bash against recording stand-ins for the engine, the AWS CLI and
    systemctl (moto never runs user data)."""
    registry = "123456789012.dkr.ecr.eu-central-1.amazonaws.com"
    environment = Environment(name="prod", region="eu-west-1", registry=registry, ami="ami-1",
                              instance_profile="ml-ec2")
    package = tmp_path / "package"
    write_test_image(package / "image", b"user data")
    release = Release.from_spec({"name": "iris", "version": 2, "compute": "ec2", "cpu": 2, "memory": 4096,
                                 "gpu": 1, "env": {"GREETING": "it's $HOME"}}, package)
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in (engine, "aws", "systemctl", "nvidia-smi", "nvidia-ctk"):
        (bin_dir / tool).write_text(f'#!/bin/sh\nprintf "%s\\n" "{tool} $*" >> {log}\n')
        (bin_dir / tool).chmod(0o755)
    script = tmp_path / "user-data.sh"
    script.write_text(ec2.user_data(release, environment))
    # Only the stand-ins on PATH: a real docker client on the machine must not be picked.
    finished = subprocess.run([shutil.which("bash") or "/bin/bash", str(script)], env={"PATH": str(bin_dir)},
                              capture_output=True, text=True, timeout=30)
    assert finished.returncode == 0, finished.stderr
    calls = log.read_text().splitlines()
    image = f"{registry}/ml/iris@{release.digest}"
    # The ECR token is asked for in the registry's region, not the environment's.
    assert "aws ecr get-login-password --region eu-central-1" in calls
    assert f"{engine} login --username AWS --password-stdin {registry}" in calls
    assert f"{engine} pull {image}" in calls
    (run,) = [c for c in calls if c.startswith(f"{engine} run ")]
    assert run.startswith(f"{engine} run -d --name ml-iris-v2 --restart=always -p 8080:8080 --memory 4096m --cpus 2 ")
    assert f"-e GREETING=it's $HOME -e ML_MODEL_URL=https://{{model}}.ml." in run  # one argument, not expanded
    assert run.endswith(f" {image}")
    # The GPU's runtime is checked and wired before anything runs.
    assert "nvidia-smi -L" in calls
    if engine == "docker":
        assert "nvidia-ctk runtime configure --runtime=docker" in calls
    else:
        assert "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml" in calls
    if engine == "docker":
        assert "--log-driver awslogs" in run and "--gpus 1" in run
        assert "systemctl enable --now docker" in calls
    else:
        assert "--log-driver journald" in run and "--device nvidia.com/gpu=all" in run
        assert "systemctl enable podman-restart.service" in calls



def test_a_gpu_model_on_an_ami_without_the_nvidia_toolkit_stops_saying_so(tmp_path: Path) -> None:
    environment = Environment(name="prod", region="eu-west-1", registry="127.0.0.1:5000", ami="ami-1")
    write_test_image(tmp_path / "image", b"gpu")
    release = Release.from_spec({"name": "sam", "compute": "ec2", "gpu": 1, "cpu": 4, "memory": 16384}, tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "systemctl", "nvidia-smi"):  # no nvidia-ctk
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    script = tmp_path / "user-data.sh"
    script.write_text(ec2.user_data(release, environment))
    finished = subprocess.run([shutil.which("bash") or "/bin/bash", str(script)], env={"PATH": str(bin_dir)},
                              capture_output=True, text=True, timeout=30)
    assert finished.returncode == 1
    assert "nvidia-ctk is missing: this GPU model needs an AMI with the NVIDIA driver and container toolkit" in \
        finished.stderr


def test_the_instance_type_must_hold_the_model(deployer: Deployer, environment: Environment) -> None:
    """EC2's own catalogue (DescribeInstanceTypes) says what a type holds."""
    with pytest.raises(ConfigError, match=r"t3.medium \(`instance_type` of environment 'test'\) is too small for "
                                          r"the model: vCPUs 4 > 2, MiB of memory 8192 > 3584"):
        deployer.plan(deployer.release("big", cpu=4, memory=8192))
    with pytest.raises(ConfigError, match=r"g5.xlarge \(`gpu_instance_type` .*GPUs 4 > 1"):
        deployer.plan(deployer.release("gpus", gpu=4))
    with pytest.raises(ConfigError, match=r"`instance_type` t9.galactic is no EC2 instance type"):
        ec2.plan(deployer.release("odd"), dataclasses.replace(environment, instance_type="t9.galactic"))
    with pytest.raises(ConfigError, match=r"`ami` ami-00000000000000000 does not exist"):
        ec2.plan(deployer.release("odd"), dataclasses.replace(environment, ami="ami-00000000000000000"))


def test_the_root_volume_holds_the_unpacked_image(deployer: Deployer, environment: Environment) -> None:
    release = deployer.release("disk")
    deployer.deploy(release)
    template = aws.client(environment, "ec2").describe_launch_template_versions(
        LaunchTemplateName=release.resource_name, Versions=["$Default"])["LaunchTemplateVersions"][0]
    (volume,) = template["LaunchTemplateData"]["BlockDeviceMappings"]
    (ami,) = aws.client(environment, "ec2").describe_images(ImageIds=[environment.ami])["Images"]
    assert volume["DeviceName"] == ami["RootDeviceName"]  # the AMI's root device
    assert volume["Ebs"]["VolumeSize"] == ec2.root_volume_gib(release) >= ec2.ROOT_VOLUME_BASE_GIB + 1
    assert volume["Ebs"]["Encrypted"] is True


def test_a_zone_without_capacity_tries_the_next_subnet(deployer: Deployer, environment: Environment) -> None:
    """InsufficientInstanceCapacity (a real account's answer; moto has capacity everywhere) in one
    zone: the instance is launched in the environment's next subnet."""
    from botocore.exceptions import ClientError  # pants: no-infer-dep

    tried = []

    def no_capacity(params: Dict[str, Any], **_: Any) -> None:
        tried.append(params["SubnetId"])
        if len(tried) == 1:
            raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity",
                                         "Message": "We currently do not have sufficient g5.xlarge capacity"}},
                              "RunInstances")

    events = aws.session(environment).events
    events.register("provide-client-params.ec2.RunInstances", no_capacity)
    try:
        release = deployer.release("crowded", gpu=1)
        assert deployer.deploy(release)
    finally:
        events.unregister("provide-client-params.ec2.RunInstances", no_capacity)
    (instance,) = instances(environment, release)
    assert len(tried) == 2 and tried[0] != tried[1] and set(tried) == set(environment.subnets)
    assert instance["SubnetId"] == tried[1]
