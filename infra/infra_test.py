"""The shared infrastructure's CloudFormation template (infra/ml-platform.yaml): linted offline
with cfn-lint against AWS's resource specifications, then created on moto and used as a deploy
environment. What moto's CloudFormation does not implement (ACM certificates, ECS capacity
providers, load balancer attributes) only a real account creates; the lint checks those
resources' properties, and the test says where it stands in for moto."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import yaml

from ml_deploy import aws, config
from ml_deploy.config import Environment
from ml_deploy.conftest import Deployer
from testutil.aws import ECR_TOKEN_CREDENTIALS, REGION, MotoServer, moto_server
from testutil.registry import RunningRegistry, start_registry
from testutil.strict_aws import StrictAws

TEMPLATE = Path("infra/ml-platform.yaml")
CFN_LINT = Path("infra/cfn-lint.pex")  # put here by runtime_package_dependencies


def load_template() -> Dict[str, Any]:
    """The template as data, CloudFormation's short tags (!Ref, !Sub, ...) kept as {tag: value}."""
    class Loader(yaml.SafeLoader):
        pass

    def tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {suffix: value}

    Loader.add_multi_constructor("!", tagged)
    return yaml.load(TEMPLATE.read_text(), Loader=Loader)  # noqa: S506 - SafeLoader plus CloudFormation's tags


def test_the_template_passes_cfn_lint() -> None:
    assert CFN_LINT.exists(), f"{CFN_LINT} is missing: the test needs runtime_package_dependencies=['infra:cfn-lint']"
    linted = subprocess.run([str(CFN_LINT), "--format", "parseable", str(TEMPLATE)], capture_output=True,
                            text=True, timeout=300)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_template_holds_what_the_deploys_check() -> None:
    """The rules the drivers enforce, met by the shared infrastructure they run on."""
    resources = load_template()["Resources"]
    attributes = {a["Key"]: a["Value"] for a in resources["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]}
    assert int(attributes["idle_timeout.timeout_seconds"]) > 60  # longer than the models' default timeout
    assert resources["Certificate"]["Properties"]["DomainName"] == {"Sub": "*.ml.${Domain}"}  # one label deeper
    assert resources["WildcardRecord"]["Properties"]["Name"] == {"Sub": "*.ml.${Domain}"}
    for provider in ("CpuCapacityProvider", "GpuCapacityProvider"):
        scaling = resources[provider]["Properties"]["AutoScalingGroupProvider"]["ManagedScaling"]
        assert scaling["Status"] == "ENABLED"  # so a GPU rollout gets its second instance
    assert resources["GpuInstances"]["Properties"]["MinSize"] == "0"  # scale to zero
    outputs = load_template()["Outputs"]
    settings = {o["Description"] for o in outputs.values()}
    assert settings <= {f.name for f in dataclasses.fields(Environment)}, settings


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    yield from moto_server(tmp_path)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    username, password = ECR_TOKEN_CREDENTIALS
    with start_registry(tmp_path / "registry", username=username, password=password) as running:
        yield running


def create_stack(environment: Environment) -> Dict[str, Any]:
    """The stack on moto, with what a team passes: its domain's hosted zone, AMIs (moto has no
    public SSM parameters), a certificate (moto's CloudFormation makes no ACM certificate)."""
    session = aws.session(environment)
    zone = session.client("route53").create_hosted_zone(Name="example.com", CallerReference="ml")["HostedZone"]["Id"]
    ami = session.client("ec2").register_image(Name="ecs-gpu")["ImageId"]
    session.client("ssm").put_parameter(Name="/ml-test/ami", Value=ami, Type="String", DataType="aws:ec2:image")
    certificate = session.client("acm").request_certificate(DomainName="*.ml.example.com",
                                                            ValidationMethod="DNS")["CertificateArn"]
    cloudformation = session.client("cloudformation")
    parameters = {"EnvironmentName": "prod", "Domain": "example.com", "HostedZoneId": zone.split("/")[-1],
                  "EcsAmi": "/ml-test/ami", "EcsGpuAmi": "/ml-test/ami", "CertificateArn": certificate,
                  "CiRoleTrust": "arn:aws:iam::123456789012:role/ci"}
    cloudformation.create_stack(StackName="ml-prod", TemplateBody=TEMPLATE.read_text(), Capabilities=["CAPABILITY_NAMED_IAM"],
                                Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()])
    (stack,) = cloudformation.describe_stacks(StackName="ml-prod")["Stacks"]
    return stack


def test_the_stack_creates_on_moto_and_its_outputs_are_a_deploy_environment(
        moto: MotoServer, registry: RunningRegistry, tmp_path: Path) -> None:
    base = Environment(name="prod", region=REGION, endpoint_url=moto.endpoint)
    stack = create_stack(base)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["Description"]: o["OutputValue"] for o in stack["Outputs"]}
    for setting in ("vpc", "subnets", "security_groups", "listener", "cluster", "execution_role", "lambda_role",
                    "instance_profile", "hosted_zone", "registry"):
        assert outputs.get(setting), (setting, outputs)
    # The outputs, as the environments file takes them (README: "Deploying to AWS"); the
    # registry is the test's (moto serves no image registry), authenticated as ECR.
    section = {**{k: v for k, v in outputs.items() if k != "registry"}, "subnets": outputs["subnets"].split(","),
               "registry": registry.host, "registry_auth": "ecr", "endpoint_url": moto.endpoint,
               "poll_seconds": 0.01}
    environment = config.parse({"prod": section}, "prod")
    session = aws.session(environment)
    elb = session.client("elbv2")
    listener = elb.describe_listeners(ListenerArns=[environment.listener])["Listeners"][0]
    assert (listener["Protocol"], listener["Port"]) == ("HTTPS", 443)
    # moto's CloudFormation drops LoadBalancerAttributes: set what the template says, as AWS would.
    idle = load_template()["Resources"]["LoadBalancer"]["Properties"]["LoadBalancerAttributes"][0]
    elb.modify_load_balancer_attributes(LoadBalancerArn=listener["LoadBalancerArn"], Attributes=[idle])

    strict = StrictAws(session).install()
    try:
        deployer = Deployer(tmp_path, environment, {"name": "iris", "compute": "fargate", "cpu": 0.5, "memory": 1024})
        release = deployer.release("on-the-stack")
        assert deployer.deploy(release), deployer.text
    finally:
        strict.uninstall()
    assert f"deployed {release.digest}: https://iris.ml.example.com/v1/" in deployer.text
    records = session.client("route53").list_resource_record_sets(HostedZoneId=environment.hosted_zone)
    names = {r["Name"].replace("\\052", "*").rstrip(".") for r in records["ResourceRecordSets"]}
    assert "*.ml.example.com" in names and "iris.ml.example.com" not in names, names  # the wildcard serves
    # The names platform/deploy.yaml's sections use.
    assert environment.execution_role.endswith(":role/ml-prod-ecs-execution")
    assert environment.lambda_role.endswith(":role/ml-prod-lambda")
    assert environment.instance_profile.endswith(":instance-profile/ml-prod-ec2")
    roles = session.client("iam").list_roles()["Roles"]
    deployer_role = next(r for r in roles if "DeployerRole" in r["RoleName"])
    assert json.dumps(deployer_role["AssumeRolePolicyDocument"]).count("arn:aws:iam::123456789012:role/ci") == 1
