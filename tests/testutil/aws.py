"""Test fixtures for the deploy tools: a moto server on 127.0.0.1 standing in for AWS.

Only AWS itself is emulated (no AWS account can be used here); everything else the deploy
tests touch is real: the registry, podman, HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from testutil.net import free_port

# Built by Pants from the `moto` resolve (tests/aws:moto-server) and put in the test sandbox by
# runtime_package_dependencies.
MOTO_SERVER_PEX = Path("tests/aws/moto-server.pex")
REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass
class MotoServer:
    process: subprocess.Popen
    endpoint: str
    log: Path

    def reset(self) -> None:
        """Forget every resource (moto's reset API), so tests start from an empty account."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_moto(workdir: Path, pex: Optional[Path] = None, timeout: float = 60) -> MotoServer:
    pex = pex or MOTO_SERVER_PEX
    if not pex.exists():
        raise RuntimeError(f"{pex} is missing: the test needs runtime_package_dependencies="
                           f"['//tests/aws:moto-server'] in its BUILD target")
    port = free_port()
    log = workdir / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(FAKE_CREDENTIALS)
    process = subprocess.Popen(
        [str(pex), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            return MotoServer(process, endpoint, log)
        except OSError:
            time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"moto server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def aws_environ(moto: MotoServer) -> dict:
    """Environment variables pointing boto3 (and the deploy tools) at `moto`."""
    return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": moto.endpoint}


def moto_server(workdir: Path, pex: Optional[Path] = None) -> Iterator[MotoServer]:
    """For a pytest fixture: `yield from moto_server(tmp_path)`. Sets the AWS environment of
    this process for the duration."""
    server = start_moto(workdir, pex)
    saved = {k: os.environ.get(k) for k in (*FAKE_CREDENTIALS, "AWS_ENDPOINT_URL")}
    os.environ.update(aws_environ(server))
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def record_api_calls(session) -> list:
    """Every AWS API call made through clients of boto3 `session` from now on, as
    "service.Operation" (e.g. "lambda.UpdateAlias"), in order. For asserting that a dry run
    makes only read calls."""
    calls: list = []

    def record(event_name: str, **_: object) -> None:
        _, service, operation = event_name.split(".", 2)
        calls.append(f"{service}.{operation}")

    session.events.register("before-call", record)
    return calls


READ_ONLY_PREFIXES = ("Get", "List", "Describe")


def mutating(calls: list) -> list:
    return [c for c in calls if not c.split(".", 1)[1].startswith(READ_ONLY_PREFIXES)]


# Imports of the helpers below (appended to this module, so they sit here).
import gzip  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import tarfile  # noqa: E402


# ---------------------------------------------------------------------------------------------
# ECR's registry auth, a tiny image, a Lambda role: what the lambda driver's tests deploy with.

# What moto's ecr.get_authorization_token decodes to (real ECR: "AWS" and a 12-hour token). A
# docker-registry with this htpasswd user plays an ECR registry for `registry_auth: ecr`.
ECR_TOKEN_CREDENTIALS = ("AWS", f"{ACCOUNT}-auth-token")
LAMBDA_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}


def create_lambda_role(session, name: str = "ml-lambda") -> str:
    """An IAM role Lambda may assume (moto's Lambda rejects roles IAM does not know); its ARN."""
    iam = session.client("iam")
    try:
        return iam.get_role(RoleName=name)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST_POLICY))["Role"]["Arn"]


def write_test_image(layout_dir: Path, content: bytes, tag: str = "v1") -> str:
    """A minimal valid single-layer OCI image layout (one file holding `content`) written to
    `layout_dir`; returns its manifest digest. Different content, different digest."""
    blobs = layout_dir / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("content.txt")
        info.size, info.mode, info.mtime = len(content), 0o644, 0
        tar.addfile(info, io.BytesIO(content))
    layer_tar = tar_bytes.getvalue()
    layer = blob(gzip.compress(layer_tar, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
    config = blob(json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer],
    }, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
    (layout_dir / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout_dir / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{**manifest, "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }))
    return manifest["digest"]


# ---------------------------------------------------------------------------------------------
# A VPC, an ALB listener, roles and an AMI: what the ECS and EC2 drivers' tests deploy into.

ECS_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}
EC2_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}


LOAD_BALANCER_IDLE_TIMEOUT = 300


def with_load_balancer(environment, cluster: str = "ml-test", domain: str = "example.com"):
    """`environment` (an ml_deploy Environment pointing at moto) plus everything the ecs and ec2
    drivers need, created in moto: a VPC with two subnets in two zones, a security group, an
    internet-facing ALB with an HTTP listener (default action 404), an ECS task execution role,
    an EC2 instance profile and an AMI id."""
    import dataclasses as _dataclasses

    from ml_deploy import aws

    session = aws.session(environment)
    ec2, elb, iam = session.client("ec2"), session.client("elbv2"), session.client("iam")
    vpc = ec2.create_vpc(CidrBlock="10.80.0.0/16")["Vpc"]["VpcId"]
    subnets = tuple(ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.80.{i}.0/24",
                                      AvailabilityZone=f"{REGION}{zone}")["Subnet"]["SubnetId"]
                    for i, zone in ((1, "a"), (2, "b")))
    group = ec2.create_security_group(GroupName="ml-models", Description="ML models", VpcId=vpc)["GroupId"]
    balancer = elb.create_load_balancer(Name="ml", Subnets=list(subnets), SecurityGroups=[group],
                                        Type="application", Scheme="internet-facing")["LoadBalancers"][0]
    # What infra/ sets: longer than any model's timeout (the default, 60 s, is not).
    elb.modify_load_balancer_attributes(LoadBalancerArn=balancer["LoadBalancerArn"], Attributes=[
        {"Key": "idle_timeout.timeout_seconds", "Value": str(LOAD_BALANCER_IDLE_TIMEOUT)}])
    listener = elb.create_listener(
        LoadBalancerArn=balancer["LoadBalancerArn"], Protocol="HTTP", Port=80,
        DefaultActions=[{"Type": "fixed-response", "FixedResponseConfig": {
            "StatusCode": "404", "ContentType": "text/plain", "MessageBody": "no such model"}}],
    )["Listeners"][0]["ListenerArn"]
    execution_role = iam.create_role(RoleName="ml-ecs-execution",
                                     AssumeRolePolicyDocument=json.dumps(ECS_TRUST_POLICY))["Role"]["Arn"]
    iam.create_role(RoleName="ml-ec2", AssumeRolePolicyDocument=json.dumps(EC2_TRUST_POLICY))
    profile = iam.create_instance_profile(InstanceProfileName="ml-ec2")["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName="ml-ec2", RoleName="ml-ec2")
    cpu, gpu = (create_capacity_provider(session, name) for name in ("ml-cpu", "ml-gpu"))
    # An AMI of the account (the driver reads its root device); moto boots nothing from it.
    ami = ec2.register_image(Name="ml-test-gpu-ready", RootDeviceName="/dev/xvda", BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}])["ImageId"]
    return _dataclasses.replace(
        environment, domain=domain, cluster=cluster, vpc=vpc, subnets=subnets, security_groups=(group,),
        listener=listener, execution_role=execution_role, instance_profile=profile, ami=ami,
        capacity_provider=cpu, gpu_capacity_provider=gpu)


def create_capacity_provider(session, name: str, managed_scaling: bool = True) -> str:
    """An ECS capacity provider over an Auto Scaling group (moto checks no group exists: the
    instances it would start cannot run here); its name."""
    group = f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:0:autoScalingGroupName/{name}"
    session.client("ecs").create_capacity_provider(name=name, autoScalingGroupProvider={
        "autoScalingGroupArn": group,
        "managedScaling": {"status": "ENABLED" if managed_scaling else "DISABLED", "targetCapacity": 100}})
    return name


def record_api_params(session) -> list:
    """Every AWS API call made through clients of boto3 `session` from now on, as
    ("service.Operation", parameters). For what moto accepts but does not keep (e.g. an ECS
    service's deploymentConfiguration)."""
    import copy

    calls: list = []

    def record(params: dict, event_name: str, **_: object) -> None:
        _, service, operation = event_name.split(".", 2)
        calls.append((f"{service}.{operation}", copy.deepcopy(params)))

    session.events.register("before-parameter-build", record)
    return calls


def alb_route(session, listener: str, host: str, path: str):
    """The target group ARN an ALB listener sends `host` + `path` to, by AWS's documented rule
    evaluation (rules by priority, lowest first; host-header and path-pattern values are
    case-insensitive/case-sensitive globs with `*` and `?`), or None for the default action.
    moto keeps the rules but routes nothing: this is the routing, read off what it keeps."""
    import fnmatch

    def matches(condition: dict) -> bool:
        field = condition["Field"]
        config = condition.get({"host-header": "HostHeaderConfig", "path-pattern": "PathPatternConfig"}[field]) or {}
        values = config.get("Values") or condition.get("Values") or []
        if field == "host-header":
            return any(fnmatch.fnmatch(host.lower(), v.lower()) for v in values)
        return any(fnmatch.fnmatchcase(path, v) for v in values)

    rules = session.client("elbv2").describe_rules(ListenerArn=listener)["Rules"]
    for rule in sorted((r for r in rules if not r["IsDefault"]), key=lambda r: int(r["Priority"])):
        if all(matches(c) for c in rule["Conditions"]):
            return rule["Actions"][0]["TargetGroupArn"]
    return None
