"""The listener side of the fargate, ecs and ec2 computes (alb.py), deployed with the fargate
driver against moto and the rules of testutil.strict_aws. moto keeps rules, attributes and
certificates but routes nothing and terminates no TLS: where a request goes is read off the
rules by testutil.aws.alb_route (AWS's documented evaluation); that a browser accepts the
certificate only a real account shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_deploy import alb, aws
from ml_deploy.config import ConfigError, Environment
from ml_deploy.conftest import Deployer
from ml_deploy.plan import UPDATE, execute
from testutil.aws import alb_route, with_load_balancer


@pytest.fixture
def environment(aws_environment: Environment) -> Environment:
    return with_load_balancer(aws_environment)


@pytest.fixture
def deployer(tmp_path: Path, environment: Environment) -> Deployer:
    return Deployer(tmp_path, environment, {"name": "iris", "version": 1, "compute": "fargate", "cpu": 0.5,
                                            "memory": 1024, "address": "models/iris:iris"})


def load_balancer(environment: Environment) -> str:
    elb = aws.client(environment, "elbv2")
    return elb.describe_listeners(ListenerArns=[environment.listener])["Listeners"][0]["LoadBalancerArn"]


def test_a_model_timeout_the_load_balancer_would_cut_first_fails_before_any_change(
        deployer: Deployer, environment: Environment) -> None:
    """ALB's default idle timeout (60 s) equals the model's default timeout: a slow request would
    get the ALB's 504, not the model's own timeout answer."""
    aws.client(environment, "elbv2").modify_load_balancer_attributes(
        LoadBalancerArn=load_balancer(environment),
        Attributes=[{"Key": "idle_timeout.timeout_seconds", "Value": "60"}])
    with pytest.raises(ConfigError, match=r"models/iris:iris: timeout=60 s, but the load balancer of environment "
                                          r"'test' closes a connection idle for 60 s"):
        deployer.plan(deployer.release("slow"))
    assert deployer.plan(deployer.release("quick", timeout=30)).changes  # below it: fine


def https_listener(environment: Environment, *names: str) -> Environment:
    """An HTTPS listener on the environment's load balancer with an ACM certificate for `names`."""
    import dataclasses

    acm, elb = aws.client(environment, "acm"), aws.client(environment, "elbv2")
    certificate = acm.request_certificate(DomainName=names[0], SubjectAlternativeNames=list(names),
                                          ValidationMethod="DNS")["CertificateArn"]
    listener = elb.create_listener(
        LoadBalancerArn=load_balancer(environment), Protocol="HTTPS", Port=443,
        Certificates=[{"CertificateArn": certificate}],
        DefaultActions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}],
    )["Listeners"][0]["ListenerArn"]
    return dataclasses.replace(environment, listener=listener)


def test_an_https_listener_needs_a_certificate_for_the_models_host(deployer: Deployer, environment: Environment) -> None:
    deployer.environment = https_listener(environment, "*.example.com", "example.com")
    with pytest.raises(ConfigError, match=r"has no certificate for iris.ml.example.com \(it has: \*.example.com, "
                                          r"example.com\); a wildcard covers one label only"):
        deployer.plan(deployer.release("tls"))

    deployer.environment = https_listener(environment, "*.ml.example.com")
    plan = deployer.plan(deployer.release("tls"))
    assert plan.url == "https://iris.ml.example.com/v1/"


@pytest.mark.parametrize("name, host, covered", [
    ("*.ml.example.com", "iris.ml.example.com", True),
    ("*.example.com", "iris.ml.example.com", False),
    ("iris.ml.example.com", "IRIS.ml.example.com", True),
    ("*.ml.example.com", "ml.example.com", False),
    ("*.ml.example.com", "a.b.ml.example.com", False),
])
def test_which_certificate_names_cover_a_host(name: str, host: str, covered: bool) -> None:
    assert alb.covers(name, host) is covered


def test_a_version_rule_ahead_of_the_oip_rules_is_moved_behind_them(deployer: Deployer, environment: Environment) -> None:
    """Rules made before the OIP bands (version 2's /v2/* anywhere in 10000-50000) would still
    capture OIP paths: a deploy moves such a rule into its band."""
    v1, v2 = deployer.release("band-1", version=1), deployer.release("band-2", version=2)
    deployer.deploy(v1)
    deployer.deploy(v2)
    elb = aws.client(environment, "elbv2")
    rule = next(r for r in elb.describe_rules(ListenerArn=environment.listener)["Rules"]
                if any(c.get("PathPatternConfig", {}).get("Values") == ["/v2/*"] for c in r["Conditions"]))
    elb.set_rule_priorities(RulePriorities=[{"RuleArn": rule["RuleArn"], "Priority": 10001}])
    session = aws.session(environment)
    assert alb_route(session, environment.listener, "iris.ml.example.com", "/v2/models/iris/versions/1/infer") != \
        alb_route(session, environment.listener, "iris.ml.example.com", "/v1/predict")  # captured

    plan = deployer.plan(v2)
    (step,) = plan.changes
    assert step.action == UPDATE and "priority 10001 -> one in 30000-49999" in step.detail
    execute(plan, say=lambda _: None)
    assert alb_route(session, environment.listener, "iris.ml.example.com", "/v2/models/iris/versions/1/infer") == \
        alb_route(session, environment.listener, "iris.ml.example.com", "/v1/predict")
    assert deployer.plan(v2).changes == []


def test_the_models_host_resolves_to_the_load_balancer(deployer: Deployer, environment: Environment) -> None:
    """No record for <model>.ml.<domain> and no wildcard: the deploy makes the model's alias
    record; a wildcard pointing at the load balancer is enough; one pointing elsewhere is an
    error. (That the name resolves on the internet only a real account shows.)"""
    import dataclasses

    route53 = aws.client(environment, "route53")
    zone = route53.create_hosted_zone(Name="example.com", CallerReference="ml-test")["HostedZone"]["Id"]
    deployer.environment = dataclasses.replace(environment, hosted_zone=zone)
    balancer = aws.client(environment, "elbv2").describe_load_balancers(
        LoadBalancerArns=[load_balancer(environment)])["LoadBalancers"][0]

    release = deployer.release("dns")
    deployer.deploy(release)
    records = {r["Name"]: r for r in route53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]}
    assert records["iris.ml.example.com."]["AliasTarget"]["DNSName"].rstrip(".") == balancer["DNSName"]
    assert deployer.plan(release).changes == []

    v2 = deployer.release("dns-2", version=2)
    route53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [
        {"Action": "DELETE", "ResourceRecordSet": records["iris.ml.example.com."]},
        {"Action": "UPSERT", "ResourceRecordSet": {"Name": "*.ml.example.com", "Type": "CNAME", "TTL": 60,
                                                   "ResourceRecords": [{"Value": "elsewhere.example.net"}]}}]})
    with pytest.raises(ConfigError, match=r"DNS record \*.ml.example.com in hosted zone .* points at "
                                          r"elsewhere.example.net, not at the load balancer"):
        deployer.plan(v2)
