"""The `ec2` compute: one EC2 instance per model version, running the image, behind the ALB.

    launch template ml-iris-v1           user data pulls the image by digest and runs it
      version N (default)                 (port 8080, restart always); one version per release
    instance i-...                       tagged ml.model / ml.version / ml.digest / ml.spec
      registered in target group ml-iris-v1 (target type instance, port 8080, see alb.py)
    listener rule iris.ml.<domain>/v1/*  -> the target group

An update replaces the instance: a new launch template version, a new instance from it,
registered in the target group and waited for until the ALB finds it healthy; only then is the
old instance deregistered (drained) and terminated. If the new instance never gets healthy it is
terminated and the old one keeps serving.

The instance's `ml.spec` tag (a fingerprint of its launch template data) is how a deploy knows an
instance already runs this release with these settings: a second deploy changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from ml_image.registry.ecr import ecr_host_region

from ml_deploy import alb, aws, ecr_repository, publish
from ml_deploy.config import ConfigError, Environment
from ml_deploy.ecs import log_group
from ml_deploy.plan import CREATE, REPLACE, UNCHANGED, UPDATE, Plan
from ml_contract.package_layout import CONTAINER_PORT, IMAGE_LAYOUT
from ml_image.registry import read_layout

from ml_deploy.release import Release

SPEC_TAG = "ml.spec"
RESOURCE_TAG = "ml.resource"
SERVING_STATES = ("pending", "running")
# Instance states from which it never runs.
GONE_STATES = ("shutting-down", "terminated", "stopping", "stopped")
LAUNCH_TEMPLATE_ID, LAUNCH_TEMPLATE_VERSION = "launch_template_id", "launch_template_version"
HOST_MEMORY_MIB = 512  # what the OS and the engine keep of an instance's memory
ROOT_VOLUME_BASE_GIB = 20
UNPACKED_PER_COMPRESSED = 3
# run_instances errors that another subnet (another availability zone) may not have.
CAPACITY_ERRORS = ("InsufficientInstanceCapacity", "Unsupported", "InsufficientFreeAddressesInSubnet")


@dataclass
class State:
    """What EC2 and the target group hold for the version (read-only calls)."""

    template: Optional[Mapping[str, Any]] = None  # the launch template, None if missing
    default_version: Optional[Mapping[str, Any]] = None
    instances: List[Mapping[str, Any]] = field(default_factory=list)  # pending or running, newest first
    registered: Dict[str, str] = field(default_factory=dict)  # target id -> target health state

    def serving(self) -> str:
        if not self.instances:
            return "nothing (new instance)"
        return ", ".join(f"instance {i['InstanceId']} ({_tag(i, 'ml.digest') or 'image unknown'}) from launch "
                         f"template version {_template_version(i)}"
                         for i in self.instances)


def plan(release: Release, environment: Environment) -> Plan:
    """Push, log group, target group, listener rule, launch template, instance."""
    _check(release, environment)
    if release.settings.secrets:
        raise ConfigError(f"{release.name} declares secrets ({', '.join(release.settings.secrets)}), which `ec2` "
                          "cannot supply yet (its user data has no way to read them without putting them "
                          "where instance metadata readers see them): use compute fargate, ecs or lambda")
    ec2 = aws.client(environment, "ec2")
    elb = aws.client(environment, "elbv2")
    check_instance_type(ec2, release, environment)
    outputs: Dict[str, str] = {}
    result = Plan(target=f"{release.name} v{release.version} -> ec2 ({environment.name})", digest=release.digest,
                  serving="")
    publish.plan_push(result, release, environment)
    ecr_repository.plan_repository(result, release, environment, lambda_pull=False)
    aws.plan_log_group(result, environment, log_group(release))
    alb.plan_target_group(result, release, environment, target_type="instance", outputs=outputs)
    state = read_state(ec2, elb, release, outputs.get(alb.TARGET_GROUP_ARN))
    result.serving = state.serving()
    # The rule comes before the instance: the ALB health-checks only target groups it routes to,
    # and the instance step waits for that health check.
    alb.plan_listener_rule(result, release, environment, outputs)
    data = launch_template_data(release, environment, root_device(ec2, environment))
    spec = fingerprint(data)
    _plan_launch_template(result, ec2, release, data, spec, state, outputs)
    _plan_instance(result, ec2, elb, release, environment, spec, state, outputs)
    return result


def instance_type(release: Release, environment: Environment) -> str:
    return environment.gpu_instance_type if release.settings.gpu else environment.instance_type


def instance_tags(release: Release, spec: str) -> Dict[str, str]:
    return {"Name": release.resource_name, RESOURCE_TAG: release.resource_name, **release.labels(), SPEC_TAG: spec}


def check_instance_type(ec2: Any, release: Release, environment: Environment) -> None:
    """The environment's instance type must hold what the model declares (said before any change)."""
    name = instance_type(release, environment)
    setting = "gpu_instance_type" if release.settings.gpu else "instance_type"
    try:
        (found,) = ec2.describe_instance_types(InstanceTypes=[name])["InstanceTypes"]
    except Exception as e:
        if aws.error_code(e) == "InvalidInstanceType":
            raise ConfigError(f"environment {environment.name!r}: `{setting}` {name} is no EC2 instance type in "
                              f"{environment.region}") from e
        raise
    cpus = found["VCpuInfo"]["DefaultVCpus"]
    memory = found["MemoryInfo"]["SizeInMiB"] - HOST_MEMORY_MIB
    gpus = sum(g.get("Count", 0) for g in (found.get("GpuInfo") or {}).get("Gpus", []))
    wanted = release.settings
    short = [f"{what} {need:g} > {have:g}" for what, need, have in (
        ("vCPUs", wanted.effective_cpu, cpus), ("MiB of memory", wanted.effective_memory, memory),
        ("GPUs", wanted.gpu, gpus)) if need > have]
    if short:
        raise ConfigError(f"{wanted.address or release.name}: {name} (`{setting}` of environment "
                          f"{environment.name!r}) is too small for the model: {', '.join(short)} (the host keeps "
                          f"{HOST_MEMORY_MIB} MiB); choose a bigger `{setting}` or lower the model's cpu/memory/gpu")


def root_device(ec2: Any, environment: Environment) -> str:
    """The AMI's root device name (where the root volume's size is set); the AMI must exist."""
    try:
        (image,) = ec2.describe_images(ImageIds=[environment.ami])["Images"]
    except Exception as e:
        if aws.error_code(e) in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed"):
            raise ConfigError(f"environment {environment.name!r}: `ami` {environment.ami} does not exist in "
                              f"{environment.region}") from e
        raise
    return image.get("RootDeviceName") or "/dev/xvda"


def root_volume_gib(release: Release) -> int:
    """Room for the image unpacked (a few times its compressed size: multi-GB torch layers),
    the engine's copy while it pulls, logs and the OS."""
    manifest = json.loads(read_layout(release.package_dir / IMAGE_LAYOUT).manifest)
    compressed = sum(layer.get("size", 0) for layer in manifest.get("layers", []))
    return ROOT_VOLUME_BASE_GIB + math.ceil(UNPACKED_PER_COMPRESSED * compressed / 2**30)


def launch_template_data(release: Release, environment: Environment, device: str = "/dev/xvda") -> Dict[str, Any]:
    """The launch template's data, without its tag specifications (they carry its fingerprint)."""
    data: Dict[str, Any] = {
        "ImageId": environment.ami,
        "InstanceType": instance_type(release, environment),
        "SecurityGroupIds": list(environment.security_groups),
        "BlockDeviceMappings": [{"DeviceName": device, "Ebs": {
            "VolumeSize": root_volume_gib(release), "VolumeType": "gp3", "Encrypted": True,
            "DeleteOnTermination": True}}],
        "UserData": base64.b64encode(user_data(release, environment).encode()).decode("ascii"),
        # IMDSv2 only, and one hop: the host (engine, AWS CLI) reaches the instance role, the
        # model's container (one hop further, behind the engine's bridge) does not.
        "MetadataOptions": {"HttpEndpoint": "enabled", "HttpTokens": "required", "HttpPutResponseHopLimit": 1},
    }
    if environment.instance_profile:
        key = "Arn" if environment.instance_profile.startswith("arn:") else "Name"
        data["IamInstanceProfile"] = {key: environment.instance_profile}
    return data


def fingerprint(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


def user_data(release: Release, environment: Environment) -> str:
    """The first-boot script: install an engine if the AMI has none, log in to ECR with the
    instance role, pull the image by digest and run it with restart policy `always`."""
    q = shlex.quote
    image = release.image_uri(environment)
    region = environment.region or ""
    # GPUs reach a container through the NVIDIA container toolkit: docker's runtime hook, podman's
    # CDI spec. The driver and the toolkit come with the AMI (the ECS GPU-optimized and the Deep
    # Learning AMIs have both); without them the model must not start on the CPU unnoticed.
    gpu_check = ("for tool in nvidia-smi nvidia-ctk; do command -v \"$tool\" >/dev/null 2>&1 || "
                 "{ echo \"ml-platform: $tool is missing: this GPU model needs an AMI with the NVIDIA driver and "
                 "container toolkit (e.g. the ECS GPU-optimized AMI)\" >&2; exit 1; }; done\n"
                 "nvidia-smi -L\n") if release.settings.gpu else ""
    gpu_docker = (f"  nvidia-ctk runtime configure --runtime=docker && systemctl restart docker\n"
                  f"  gpus=(--gpus {release.settings.gpu})\n") if release.settings.gpu else ""
    gpu_podman = ("  nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml\n"
                  "  gpus=(--device nvidia.com/gpu=all)\n") if release.settings.gpu else ""
    login = ""
    if ecr_repository.is_ecr(environment):
        registry = environment.registry or ""
        ecr_region = ecr_host_region(registry) or region
        # No password can go in user data (anyone allowed DescribeInstanceAttribute reads it):
        # the token comes from ECR through the instance role, valid for 12 hours.
        login = ("# The AWS CLI fetches the token: installed from the distribution if the AMI has none.\n"
                 "command -v aws >/dev/null 2>&1 || dnf install -y awscli || yum install -y awscli || "
                 "{ apt-get update && apt-get install -y awscli; }\n"
                 f"ecr_login() {{ aws ecr get-login-password --region {q(ecr_region)} | "
                 f"\"$engine\" login --username AWS --password-stdin {q(registry)}; }}\n"
                 f"retry ecr_login\n")
    env_args = "".join(f" \\\n  -e {q(f'{k}={v}')}" for k, v in sorted(release.runtime_env(environment).items()))
    gpu_args = ' "${gpus[@]}"' if release.settings.gpu else ""
    return f"""#!/bin/bash
# ml-platform: {release.name} v{release.version}, image {release.digest} (written by ml_deploy.ec2).
# Runs once, at first boot; the engine's restart policy keeps the model up after that.
set -euo pipefail
image={q(image)}
name={q(release.resource_name)}
retry() {{ for attempt in 1 2 3 4 5 6 7 8 9; do "$@" && return 0; sleep 10; done; "$@"; }}
{gpu_check}if command -v docker >/dev/null 2>&1; then
  engine=docker
  systemctl enable --now docker || true
  logging=(--log-driver awslogs --log-opt awslogs-region={q(region)} --log-opt awslogs-group={q(log_group(release))} --log-opt {q(f"tag=v{release.version}/{{{{.ID}}}}")})
{gpu_docker}else
  # No Docker on the AMI: podman from the distribution (Amazon Linux/RHEL-likes, then Debian/Ubuntu).
  command -v podman >/dev/null 2>&1 || dnf install -y podman || yum install -y podman || {{ apt-get update && apt-get install -y podman; }}
  engine=podman
  # podman has no daemon: its restart policy survives a reboot only through this unit.
  systemctl enable podman-restart.service || true
  logging=(--log-driver journald)
{gpu_podman}fi
{login}retry "$engine" pull "$image"
"$engine" rm -f "$name" >/dev/null 2>&1 || true
"$engine" run -d --name "$name" --restart=always -p {CONTAINER_PORT}:{CONTAINER_PORT} \\
  --memory {release.settings.effective_memory}m --cpus {release.settings.effective_cpu:g} "${{logging[@]}}"{gpu_args}{env_args} \\
  "$image"
"""


def read_state(ec2: Any, elb: Any, release: Release, target_group_arn: Optional[str]) -> State:
    state = State()
    try:
        templates = ec2.describe_launch_templates(LaunchTemplateNames=[release.resource_name])["LaunchTemplates"]
    except Exception as e:
        if aws.error_code(e) != "InvalidLaunchTemplateName.NotFoundException":
            raise
        templates = []
    if templates:
        state.template = templates[0]
        state.default_version = ec2.describe_launch_template_versions(
            LaunchTemplateId=templates[0]["LaunchTemplateId"], Versions=["$Default"])["LaunchTemplateVersions"][0]
    instances = []
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[
        {"Name": f"tag:{RESOURCE_TAG}", "Values": [release.resource_name]},
        {"Name": "instance-state-name", "Values": list(SERVING_STATES)}])
    for page in pages:
        for reservation in page["Reservations"]:
            instances.extend(reservation["Instances"])
    state.instances = sorted(instances, key=lambda i: str(i.get("LaunchTime", "")), reverse=True)
    if target_group_arn:
        health = elb.describe_target_health(TargetGroupArn=target_group_arn)["TargetHealthDescriptions"]
        state.registered = {h["Target"]["Id"]: h["TargetHealth"]["State"] for h in health
                            if h["TargetHealth"]["State"] not in ("draining", "unused")}
    return state


def _check(release: Release, environment: Environment) -> None:
    why = f"deploying {release.name} v{release.version} to ec2"
    environment.require("registry", "region", "ami", "vpc", "subnets", "security_groups", "listener", why=why)
    if ecr_repository.is_ecr(environment):
        environment.require("instance_profile", why=f"{why} (the instance pulls from ECR with its role)")


def _plan_launch_template(result: Plan, ec2: Any, release: Release, data: Dict[str, Any], spec: str,
                          state: State, outputs: Dict[str, str]) -> None:
    name = release.resource_name
    resource = f"EC2 launch template {name}"
    description = f"{release.digest} spec {spec}"
    template_tags = [{"ResourceType": "instance", "Tags": _aws_tags(instance_tags(release, spec))}]
    full = {**data, "TagSpecifications": template_tags}
    if state.template is None:
        def create() -> str:
            created = ec2.create_launch_template(
                LaunchTemplateName=name, LaunchTemplateData=full, VersionDescription=description,
                TagSpecifications=[{"ResourceType": "launch-template",
                                    "Tags": _aws_tags({RESOURCE_TAG: name, **release.labels()})}])["LaunchTemplate"]
            outputs[LAUNCH_TEMPLATE_ID] = created["LaunchTemplateId"]
            outputs[LAUNCH_TEMPLATE_VERSION] = str(created["LatestVersionNumber"])
            return f"version {created['LatestVersionNumber']}"

        result.add(CREATE, resource, f"{data['InstanceType']}, {data['ImageId']}, user data runs "
                                     f"{release.digest}", create)
        return

    template_id = outputs[LAUNCH_TEMPLATE_ID] = state.template["LaunchTemplateId"]
    default = state.default_version or {}
    if default.get("VersionDescription") == description:
        outputs[LAUNCH_TEMPLATE_VERSION] = str(default["VersionNumber"])
        result.add(UNCHANGED, resource, f"version {default['VersionNumber']} runs {release.digest}")
        return

    def new_version() -> str:
        # The whole data every time: a version made from a source version keeps what we would
        # drop, and moto 5.2.5 does not even copy the source's data.
        created = ec2.create_launch_template_version(
            LaunchTemplateId=template_id, LaunchTemplateData=full, VersionDescription=description,
        )["LaunchTemplateVersion"]
        version = str(created["VersionNumber"])
        # The default version is what anyone launching from the template by hand gets.
        ec2.modify_launch_template(LaunchTemplateId=template_id, DefaultVersion=version)
        outputs[LAUNCH_TEMPLATE_VERSION] = version
        return f"version {version} (default)"

    was = (default.get("VersionDescription") or "").split(" ")[0] or "an unknown image"
    change = f"image {was} -> {release.digest}" if was != release.digest else "settings changed"
    result.add(UPDATE, resource, f"new default version: {change}", new_version)


def _plan_instance(result: Plan, ec2: Any, elb: Any, release: Release, environment: Environment, spec: str,
                   state: State, outputs: Dict[str, str]) -> None:
    resource = f"EC2 instance of {release.resource_name}"
    fresh = [i for i in state.instances if _tag(i, SPEC_TAG) == spec]
    keep = fresh[0] if fresh else None
    stale = [i["InstanceId"] for i in state.instances if i is not keep]
    replacer = _Replacer(result, ec2, elb, release, environment, outputs, spec, stale)

    if keep is not None:
        kept = keep["InstanceId"]
        if kept in state.registered and not stale:
            result.add(UNCHANGED, resource, f"{kept} runs {release.digest}")
            return
        # A deploy that failed between launching and retiring left this: finish its work.
        todo = ([] if kept in state.registered else [f"register {kept}"]) + [f"terminate {i}" for i in stale]
        result.add(UPDATE, resource, ", ".join(todo), lambda: replacer.run(existing=kept))
        return
    launch = f"{instance_type(release, environment)} from the launch template, registered in target group " \
             f"{alb.target_group_name(release)}"
    if stale:
        result.add(REPLACE, resource, f"{', '.join(stale)} -> a new {launch}; then terminate the old "
                                      f"once the new one is healthy", replacer.run)
    else:
        result.add(CREATE, resource, launch, replacer.run)


class _Replacer:
    """Launch (or adopt) the new instance, wait until the ALB finds it healthy, then retire the
    old ones. Anything going wrong before the old ones are touched leaves them serving."""

    def __init__(self, plan: Plan, ec2: Any, elb: Any, release: Release, environment: Environment,
                 outputs: Dict[str, str], spec: str, stale: List[str]) -> None:
        self.plan, self.ec2, self.elb, self.release, self.environment = plan, ec2, elb, release, environment
        self.outputs, self.spec, self.stale = outputs, spec, stale

    def target(self, instance_id: str) -> Dict[str, Any]:
        return {"Id": instance_id, "Port": CONTAINER_PORT}

    def run(self, existing: Optional[str] = None) -> str:
        new = existing or self.launch()
        try:
            self.wait(new)
        except Exception as e:
            if existing is None:
                raise RuntimeError(f"{e}; {self.discard(new)}") from e
            raise
        for old in self.stale:
            self.retire(old)
        retired = f"; terminated {', '.join(self.stale)}" if self.stale else ""
        return f"{new} healthy in target group {alb.target_group_name(self.release)}{retired}"

    def launch(self) -> str:
        template = {"LaunchTemplateId": self.outputs[LAUNCH_TEMPLATE_ID],
                    "Version": self.outputs[LAUNCH_TEMPLATE_VERSION]}
        tags = {**instance_tags(self.release, self.spec), "ml.launch-template-version": template["Version"]}
        # Each subnet in turn (another availability zone) while EC2 has no capacity for the type
        # there; versions start at different subnets, so their instances spread over the zones.
        subnets = list(self.environment.subnets)
        start = int(hashlib.sha256(self.release.resource_name.encode()).hexdigest(), 16) % len(subnets)
        refused = []
        for subnet in subnets[start:] + subnets[:start]:
            try:
                instance = self.ec2.run_instances(
                    LaunchTemplate=template, MinCount=1, MaxCount=1, SubnetId=subnet,
                    TagSpecifications=[{"ResourceType": "instance", "Tags": _aws_tags(tags)}])["Instances"][0]
            except Exception as e:
                if aws.error_code(e) not in CAPACITY_ERRORS:
                    raise
                refused.append(f"{subnet}: {aws.error_code(e)}")
                continue
            return instance["InstanceId"]
        raise RuntimeError(f"no subnet had capacity for {instance_type(self.release, self.environment)} "
                           f"({'; '.join(refused)}): try again later, add subnets in other zones, or choose "
                           f"another instance type")

    def wait(self, instance_id: str) -> None:
        """Until the instance runs, then until the ALB finds it healthy (booting, pulling a
        multi-GB image and loading the model take minutes), saying how it stands; bounded by the
        environment's rollout_timeout."""
        group = self.outputs[alb.TARGET_GROUP_ARN]

        def running() -> Any:
            (reservation,) = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
            instance = reservation["Instances"][0]
            state = instance["State"]["Name"]
            if state in GONE_STATES:
                reason = (instance.get("StateReason") or {}).get("Message", "no reason given")
                raise RuntimeError(f"instance {instance_id} is {state}: {reason}")
            return state == "running", state

        aws.wait_for(f"EC2 instance {instance_id}", running, self.environment, self.plan.say)
        self.elb.register_targets(TargetGroupArn=group, Targets=[self.target(instance_id)])

        def healthy() -> Any:
            health = self.elb.describe_target_health(TargetGroupArn=group, Targets=[self.target(instance_id)])
            found = (health["TargetHealthDescriptions"] or [{}])[0].get("TargetHealth", {})
            return found.get("State") == "healthy", " ".join(
                str(found.get(k)) for k in ("State", "Reason", "Description") if found.get(k))

        try:
            aws.wait_for(f"target {instance_id} in {alb.target_group_name(self.release)}", healthy,
                         self.environment, self.plan.say)
        except aws.RolloutTimedOut as e:
            raise RuntimeError(f"{e} (its user data log: /var/log/cloud-init-output.log)") from e

    def discard(self, instance_id: str) -> str:
        """The new instance failed: take it out again, so that only the old ones serve."""
        group = self.outputs.get(alb.TARGET_GROUP_ARN)
        try:
            if group:
                self.elb.deregister_targets(TargetGroupArn=group, Targets=[self.target(instance_id)])
            self.ec2.terminate_instances(InstanceIds=[instance_id])
        except Exception as e:  # the first failure is the one to report; this one is said with it
            return f"terminating the new instance {instance_id} failed too ({e}): terminate it by hand"
        return f"the new instance {instance_id} was terminated"

    def retire(self, instance_id: str) -> None:
        from botocore.exceptions import WaiterError  # pants: no-infer-dep

        group = self.outputs[alb.TARGET_GROUP_ARN]
        self.elb.deregister_targets(TargetGroupArn=group, Targets=[self.target(instance_id)])
        # Let requests in flight finish (the group's deregistration delay) before terminating.
        delay = max(5, self.release.settings.timeout + 5)
        try:
            self.elb.get_waiter("target_deregistered").wait(
                TargetGroupArn=group, Targets=[self.target(instance_id)],
                WaiterConfig={"Delay": 5, "MaxAttempts": delay // 5 + 12})
        except WaiterError:
            pass  # drained or not, the new instance serves: terminating is what remains
        self.ec2.terminate_instances(InstanceIds=[instance_id])


def _aws_tags(tags: Mapping[str, str]) -> List[Dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _template_version(instance: Mapping[str, Any]) -> str:
    # EC2 tags instances launched from a template itself; ours is there for those it did not.
    return (_tag(instance, "aws:ec2launchtemplate:version") or _tag(instance, "ml.launch-template-version")
            or "unknown")


def _tag(resource: Mapping[str, Any], key: str) -> Optional[str]:
    return next((t["Value"] for t in resource.get("Tags") or [] if t["Key"] == key), None)
