"""The load balancer side of the `fargate`, `ecs` and `ec2` computes: one ALB target group per
model version and the rules on the environment's listener sending it that version's traffic.

    listener (environment.listener)
      rule  <model>.ml.<domain>  /v2/models/*/versions/<N>/*     -> ml-<model>-v<N>  (OIP, band 1)
      rule  <model>.ml.<domain>  /v2, /v2/health/*, /v2/models/* -> the highest N    (OIP, band 2)
      rule  <model>.ml.<domain>  /v<N>/*                         -> ml-<model>-v<N>  (band 3)
        target group ml-<model>-v<N>   port 8080, health check /v2/health/ready

The Open Inference Protocol's paths start with /v2 whatever the model's version, so version 2's
`/v2/*` would capture them: the OIP rules take priorities in bands before every version rule
(ALB tries rules by priority, lowest first), and a rule found outside its band is moved into it.
The routing is the local gateway's (ml_gateway.routes): OIP paths naming a version go to it,
the others to the highest version deployed.

A rule is found by its conditions (they are what makes it that rule), so a second deploy finds
the rule the first created whatever priority it got.

The listener is checked too: its load balancer's idle timeout must outlast the model's timeout
(or the ALB cuts a slow request with a 504 before the model can answer), and an HTTPS
listener's certificates must cover <model>.ml.<domain> (`*.example.com` does not).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ml_deploy import aws
from ml_deploy.config import ConfigError, Environment
from ml_deploy.plan import CREATE, DELETE, UNCHANGED, UPDATE, Plan
from ml_contract.package_layout import CONTAINER_PORT, READY_PATH

from ml_deploy.release import Release

NAME_LIMIT = 32  # ELBv2's limit on target group names
# Listener rule priorities are 1-50000 and unique per listener. Ours start high so that rules
# people add by hand (low numbers by habit) keep precedence and rarely collide with ours; each
# kind of rule has a band, tried in this order.
OIP_VERSION, OIP_LATEST, VERSION = "oip-version", "oip-latest", "version"
PRIORITY_BANDS = {OIP_VERSION: (10000, 20000), OIP_LATEST: (20000, 30000), VERSION: (30000, 50000)}
# OIP paths that name no version (ml_gateway.routes serves them from the highest version).
OIP_UNVERSIONED_PATHS = ["/v2", "/v2/health/*", "/v2/models/*"]
IDLE_TIMEOUT_ATTRIBUTE = "idle_timeout.timeout_seconds"
ALB_DEFAULT_IDLE_TIMEOUT = 60
HEALTH_CHECK = {
    "HealthCheckProtocol": "HTTP",
    "HealthCheckPort": "traffic-port",
    "HealthCheckPath": READY_PATH,
    "HealthCheckIntervalSeconds": 15,
    "HealthCheckTimeoutSeconds": 5,
    "HealthyThresholdCount": 2,
    "UnhealthyThresholdCount": 3,
    "Matcher": {"HttpCode": "200"},
}
_VERSION_PATH = re.compile(r"^/v(\d+)/\*$")
# Keys of the shared outputs dict the drivers' steps fill.
TARGET_GROUP_ARN = "target_group_arn"
LOAD_BALANCER_ARN = "load_balancer_arn"  # the listener's, set by plan_listener_rule


def target_group_name(release: Release) -> str:
    """resource_name, or when that is too long for ELBv2, a prefix of it plus a hash of it."""
    name = release.resource_name
    if len(name) <= NAME_LIMIT:
        return name
    suffix = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[:NAME_LIMIT - len(suffix) - 1].rstrip('-')}-{suffix}"


def path_pattern(release: Release) -> str:
    return f"/v{release.version}/*"


def rule_paths(release: Release, kind: str) -> List[str]:
    if kind == OIP_VERSION:
        return [f"/v2/models/*/versions/{release.version}", f"/v2/models/*/versions/{release.version}/*"]
    if kind == OIP_LATEST:
        return list(OIP_UNVERSIONED_PATHS)
    return [path_pattern(release)]


def conditions(release: Release, environment: Environment, kind: str = VERSION) -> List[Dict[str, Any]]:
    return [
        {"Field": "host-header", "HostHeaderConfig": {"Values": [release.hostname(environment)]}},
        {"Field": "path-pattern", "PathPatternConfig": {"Values": rule_paths(release, kind)}},
    ]


def tags(release: Release) -> List[Dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in {**release.labels(), "ml.resource": release.resource_name}.items()]


def plan_target_group(plan: Plan, release: Release, environment: Environment, *, target_type: str,
                      outputs: Dict[str, str]) -> None:
    """The version's target group (`ip` for awsvpc tasks, `instance` for EC2 instances, `lambda`
    for a function's alias); its ARN goes to outputs[TARGET_GROUP_ARN], now if it exists, else
    when the step creates it."""
    elb = aws.client(environment, "elbv2")
    name = target_group_name(release)
    resource = f"target group {name}"
    current = _find_target_group(elb, name)
    if current is None:
        def create() -> None:
            # A Lambda target has no port, VPC or health check (each check would be an invocation).
            where = ({"HealthCheckEnabled": False} if target_type == "lambda" else
                     {"Protocol": "HTTP", "Port": CONTAINER_PORT, "VpcId": environment.vpc, **HEALTH_CHECK})
            created = elb.create_target_group(Name=name, TargetType=target_type, Tags=tags(release),
                                              **where)["TargetGroups"][0]
            outputs[TARGET_GROUP_ARN] = created["TargetGroupArn"]
            if target_type != "lambda":
                _set_deregistration_delay(elb, created["TargetGroupArn"], release)

        plan.add(CREATE, resource, "a Lambda function's alias" if target_type == "lambda" else
                 f"{target_type} targets on port {CONTAINER_PORT}, health check {READY_PATH}", create)
        return

    arn = outputs[TARGET_GROUP_ARN] = current["TargetGroupArn"]
    if current.get("TargetType") != target_type:
        # Neither the type nor the VPC of a group can change, and the version's rule uses it.
        raise ConfigError(
            f"{resource} has target type {current.get('TargetType')}, but {release.name} v{release.version} "
            f"on {release.compute} needs target type {target_type}: the version was deployed to another "
            f"compute before; delete its target group, listener rule and service or instance, or "
            f"deploy a new model version")
    if target_type == "lambda":
        plan.add(UNCHANGED, resource, "a Lambda function's alias")
        return
    if current.get("VpcId") != environment.vpc:
        raise ConfigError(
            f"{resource} is in {current.get('VpcId')}, but environment {environment.name!r} sets vpc "
            f"{environment.vpc}: correct `vpc`, or delete the target group and its listener rule")
    drift = _health_check_drift(current)
    if not drift:
        plan.add(UNCHANGED, resource, f"{target_type} targets, health check {READY_PATH}")
        return

    def update() -> None:
        elb.modify_target_group(TargetGroupArn=arn, **HEALTH_CHECK)
        _set_deregistration_delay(elb, arn, release)

    plan.add(UPDATE, resource, "health check: " + ", ".join(drift), update)


def plan_listener_rule(plan: Plan, release: Release, environment: Environment,
                       outputs: Dict[str, str]) -> None:
    """The rules sending the version's traffic (its /v<N>/ paths, its OIP paths, and while it is
    the highest version the OIP paths naming none) to its target group. Also checks the
    listener (idle timeout, certificate) and sets plan.url from its protocol and port."""
    elb = aws.client(environment, "elbv2")
    listener = _describe_listener(elb, environment)
    outputs[LOAD_BALANCER_ARN] = listener["LoadBalancerArn"]
    check_listener(elb, listener, release, environment)
    plan.url = _url(release, environment, listener)
    if environment.hosted_zone:
        plan_dns_record(plan, release, environment, elb, listener)
    rules = list(_rules(elb, environment.listener))
    deployed = _versions_routed(rules, release, environment)
    kinds = [OIP_VERSION, VERSION]
    if release.version >= max(deployed, default=0):
        kinds.insert(1, OIP_LATEST)
    for kind in kinds:
        _plan_rule(plan, elb, release, environment, outputs, rules, kind)


def _plan_rule(plan: Plan, elb: Any, release: Release, environment: Environment, outputs: Dict[str, str],
               rules: List[Mapping[str, Any]], kind: str) -> None:
    listener = environment.listener
    paths = ", ".join(rule_paths(release, kind))
    label = " (the highest version)" if kind == OIP_LATEST else ""
    resource = f"listener rule {release.hostname(environment)} {paths}{label}"
    rule = _find_rule(rules, release, environment, kind)
    # The group's ARN is only known now if the group exists; otherwise the group step sets it.
    known_arn = outputs.get(TARGET_GROUP_ARN)

    if rule is None:
        def create() -> str:
            priority = _create_rule(elb, listener, release, environment, outputs[TARGET_GROUP_ARN], kind)
            return f"priority {priority}"

        plan.add(CREATE, resource, f"forward to target group {target_group_name(release)}", create)
        return
    low, high = PRIORITY_BANDS[kind]
    in_band = str(rule.get("Priority", "")).isdigit() and low <= int(rule["Priority"]) < high
    forwards = known_arn is not None and _forwards_to(rule) == [known_arn]
    if forwards and in_band:
        plan.add(UNCHANGED, resource, f"priority {rule['Priority']}")
        return
    changes = [] if forwards else [f"forward to target group {target_group_name(release)}"]
    if not in_band:
        changes.append(f"priority {rule['Priority']} -> one in {low}-{high - 1} (OIP rules come before version rules)")

    def update() -> None:
        if not forwards:
            elb.modify_rule(RuleArn=rule["RuleArn"], Actions=_forward(outputs[TARGET_GROUP_ARN]))
        if not in_band:
            used = [int(r["Priority"]) for r in _rules(elb, listener) if str(r.get("Priority", "")).isdigit()]
            priority = free_priority(preferred_priority(release, environment, kind), used, kind)
            elb.set_rule_priorities(RulePriorities=[{"RuleArn": rule["RuleArn"], "Priority": priority}])

    plan.add(UPDATE, resource, f"priority {rule['Priority']}: " + "; ".join(changes), update)


def _find_rule(rules: Iterable[Mapping[str, Any]], release: Release, environment: Environment,
               kind: str) -> Optional[Mapping[str, Any]]:
    """The rule of that kind for the release, found by its conditions (they are what make it so)."""
    wanted = conditions(release, environment, kind)
    return next((r for r in rules if _same_conditions(r.get("Conditions", []), wanted)), None)


def _versions_routed(rules: Iterable[Mapping[str, Any]], release: Release, environment: Environment) -> List[int]:
    """The versions of the release's model that have a version rule on the listener."""
    host = release.hostname(environment)
    versions = []
    for rule in rules:
        fields = {c.get("Field"): _condition_values(c) for c in rule.get("Conditions", [])}
        paths = fields.get("path-pattern") or []
        if fields.get("host-header") == [host] and len(paths) == 1:
            match = _VERSION_PATH.match(paths[0])
            if match:
                versions.append(int(match.group(1)))
    return versions


def plan_dns_record(plan: Plan, release: Release, environment: Environment, elb: Any,
                    listener: Mapping[str, Any]) -> None:
    """<model>.ml.<domain> must resolve to the listener's load balancer: a record for the host, or
    the wildcard for every model, pointing there; created for the host when neither exists."""
    route53 = aws.client(environment, "route53")
    balancer = elb.describe_load_balancers(LoadBalancerArns=[listener["LoadBalancerArn"]])["LoadBalancers"][0]
    target = balancer["DNSName"].lower().rstrip(".")
    host = release.hostname(environment)
    wildcard = f"*.ml.{environment.domain}"
    resource = f"DNS record {host}"
    pages = route53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=environment.hosted_zone)
    # Route 53 answers names with a final dot and `*` as \052.
    named = [(r["Name"].replace("\\052", "*").rstrip(".").lower(), r) for page in pages for r in page["ResourceRecordSets"]]
    found = [(n, r) for n, r in named if r["Type"] in ("A", "AAAA", "CNAME") and n in (host, wildcard)]
    for name, record in sorted(found, key=lambda f: f[0] != host):  # the host's own record first
        points = ((record.get("AliasTarget") or {}).get("DNSName")
                  or next((v["Value"] for v in record.get("ResourceRecords", [])), ""))
        points = points.lower().rstrip(".").removeprefix("dualstack.")
        if points != target:
            raise ConfigError(f"environment {environment.name!r}: DNS record {name} in hosted zone "
                              f"{environment.hosted_zone} points at {points}, not at the load balancer of "
                              f"`listener` ({target}): correct the record, or `listener`")
        plan.add(UNCHANGED, resource, f"{name} -> {target}")
        return

    def create() -> None:
        route53.change_resource_record_sets(HostedZoneId=environment.hosted_zone, ChangeBatch={
            "Comment": f"ml-platform: {release.name}",
            "Changes": [{"Action": "UPSERT", "ResourceRecordSet": {
                "Name": host, "Type": "A", "AliasTarget": {
                    "HostedZoneId": balancer["CanonicalHostedZoneId"], "DNSName": balancer["DNSName"],
                    "EvaluateTargetHealth": False}}}]})

    plan.add(CREATE, resource, f"alias A -> {target} (no record for it or for {wildcard})", create)


def check_listener(elb: Any, listener: Mapping[str, Any], release: Release, environment: Environment) -> None:
    """Said before anything is created: what would make the listener fail the model."""
    where = release.settings.address or release.name
    attributes = elb.describe_load_balancer_attributes(LoadBalancerArn=listener["LoadBalancerArn"])["Attributes"]
    idle = int(next((a["Value"] for a in attributes if a["Key"] == IDLE_TIMEOUT_ATTRIBUTE), ALB_DEFAULT_IDLE_TIMEOUT))
    if release.settings.timeout >= idle:
        raise ConfigError(
            f"{where}: timeout={release.settings.timeout} s, but the load balancer of environment "
            f"{environment.name!r} closes a connection idle for {idle} s ({IDLE_TIMEOUT_ATTRIBUTE}): a slow "
            f"request would get the ALB's 504 before the model's own timeout answer. Lower the model's "
            f"`timeout` below {idle}, or raise the load balancer's idle timeout (infra/ sets 300 s)")
    if listener.get("Protocol") != "HTTPS":
        return
    host = release.hostname(environment)
    acm = aws.client(environment, "acm")
    names: List[str] = []
    pages = elb.get_paginator("describe_listener_certificates").paginate(ListenerArn=listener["ListenerArn"])
    for page in pages:
        for certificate in page["Certificates"]:
            described = acm.describe_certificate(CertificateArn=certificate["CertificateArn"])["Certificate"]
            names += [described.get("DomainName", ""), *described.get("SubjectAlternativeNames", [])]
    if not any(covers(name, host) for name in names):
        raise ConfigError(
            f"{where}: the HTTPS listener of environment {environment.name!r} has no certificate for {host} "
            f"(it has: {', '.join(sorted(set(names))) or 'none'}); a wildcard covers one label only, so "
            f"`*.{environment.domain}` does not: add a certificate for `*.ml.{environment.domain}` (infra/ does)")


def covers(certificate_name: str, host: str) -> bool:
    """Whether a certificate's name covers `host`: equal, or a wildcard for exactly one label."""
    name, host = certificate_name.lower().rstrip("."), host.lower().rstrip(".")
    if name.startswith("*."):
        label, _, rest = host.partition(".")
        return bool(label) and rest == name[2:]
    return name == host


def preferred_priority(release: Release, environment: Environment, kind: str = VERSION) -> int:
    """A priority that depends only on the hostname, version and kind of rule, so that a rule
    usually gets the same priority in every environment; the next free one is taken if it is in
    use."""
    low, high = PRIORITY_BANDS[kind]
    key = f"{release.hostname(environment)}{','.join(rule_paths(release, kind))}".encode()
    return low + int(hashlib.sha256(key).hexdigest(), 16) % (high - low)


def free_priority(preferred: int, used: Iterable[int], kind: str = VERSION) -> int:
    taken = set(used)
    low, high = PRIORITY_BANDS[kind]
    span = high - low
    for offset in range(span):
        candidate = low + (preferred - low + offset) % span
        if candidate not in taken:
            return candidate
    raise RuntimeError(f"no free listener rule priority between {low} and {high}")


def _create_rule(elb: Any, listener: str, release: Release, environment: Environment,
                 target_group_arn: str, kind: str) -> int:
    # The free priority is looked up again here rather than at plan time: another deploy may
    # have taken one since. PriorityInUse means one raced us between the look-up and the create.
    for _ in range(5):
        used = [int(r["Priority"]) for r in _rules(elb, listener) if str(r.get("Priority", "")).isdigit()]
        priority = free_priority(preferred_priority(release, environment, kind), used, kind)
        try:
            elb.create_rule(ListenerArn=listener, Priority=priority, Conditions=conditions(release, environment, kind),
                            Actions=_forward(target_group_arn), Tags=tags(release))
        except Exception as e:
            if aws.error_code(e) == "PriorityInUse":
                continue
            raise
        return priority
    raise RuntimeError(f"listener {listener}: every free priority tried was taken meanwhile")


def _forward(target_group_arn: str) -> List[Dict[str, Any]]:
    return [{"Type": "forward", "TargetGroupArn": target_group_arn}]


def _forwards_to(rule: Mapping[str, Any]) -> List[str]:
    arns: List[str] = []
    for action in rule.get("Actions", []):
        if action.get("Type") != "forward":
            continue
        if action.get("TargetGroupArn"):
            arns.append(action["TargetGroupArn"])
        for group in (action.get("ForwardConfig") or {}).get("TargetGroups", []):
            if group.get("TargetGroupArn") not in arns:
                arns.append(group["TargetGroupArn"])
    return arns


def _condition_values(condition: Mapping[str, Any]) -> List[str]:
    # ELBv2 answers with both the old `Values` and the newer `<Field>Config` forms.
    field = condition.get("Field", "")
    config_key = {"host-header": "HostHeaderConfig", "path-pattern": "PathPatternConfig"}.get(field)
    values = (condition.get(config_key) or {}).get("Values") if config_key else None
    return sorted(values or condition.get("Values") or [])


def _same_conditions(current: Iterable[Mapping[str, Any]], wanted: Iterable[Mapping[str, Any]]) -> bool:
    def key(conds: Iterable[Mapping[str, Any]]) -> List[Any]:
        return sorted((c.get("Field", ""), _condition_values(c)) for c in conds)

    return key(current) == key(wanted)


def _rules(elb: Any, listener: Optional[str]) -> Iterable[Mapping[str, Any]]:
    for page in elb.get_paginator("describe_rules").paginate(ListenerArn=listener):
        yield from page["Rules"]


def _find_target_group(elb: Any, name: str) -> Optional[Mapping[str, Any]]:
    try:
        return elb.describe_target_groups(Names=[name])["TargetGroups"][0]
    except Exception as e:
        if aws.error_code(e) == "TargetGroupNotFound":
            return None
        raise


def _describe_listener(elb: Any, environment: Environment) -> Mapping[str, Any]:
    try:
        return elb.describe_listeners(ListenerArns=[environment.listener])["Listeners"][0]
    except Exception as e:
        if aws.error_code(e) in ("ListenerNotFound", "ValidationError"):
            raise ConfigError(f"environment {environment.name!r}: listener {environment.listener} "
                              f"does not exist ({aws.error_code(e)}); set `listener` to the ARN of the "
                              f"ALB listener serving *.ml.{environment.domain}") from e
        raise


def _url(release: Release, environment: Environment, listener: Mapping[str, Any]) -> str:
    scheme = "https" if listener.get("Protocol") == "HTTPS" else "http"
    port = listener.get("Port")
    default = {"http": 80, "https": 443}[scheme]
    where = release.hostname(environment) + (f":{port}" if port and port != default else "")
    return f"{scheme}://{where}/v{release.version}/"


def _health_check_drift(current: Mapping[str, Any]) -> List[str]:
    return [f"{key} {current.get(key)!r} -> {value!r}" for key, value in HEALTH_CHECK.items()
            if current.get(key) != value]


def _set_deregistration_delay(elb: Any, arn: str, release: Release) -> None:
    # Draining lasts as long as a request may (the model's timeout), not ELB's default 300 s:
    # replacing a task or an instance then takes seconds longer than the slowest request.
    seconds = max(5, min(3600, release.settings.timeout + 5))
    elb.modify_target_group_attributes(TargetGroupArn=arn, Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": str(seconds)}])


# -- retiring a version (ml_deploy.retire) ------------------------------------------------------

def recent_requests(environment: Environment, group_arn: str, balancer_arn: str, minutes: int) -> int:
    """Requests the load balancer sent the target group in the last `minutes` (CloudWatch)."""
    import datetime

    cloudwatch = aws.client(environment, "cloudwatch")
    now = datetime.datetime.now(datetime.timezone.utc)
    stats = cloudwatch.get_metric_statistics(
        Namespace="AWS/ApplicationELB", MetricName="RequestCount", Statistics=["Sum"], Period=60 * minutes,
        StartTime=now - datetime.timedelta(minutes=minutes), EndTime=now,
        Dimensions=[{"Name": "TargetGroup", "Value": group_arn.rpartition(":")[2]},
                    {"Name": "LoadBalancer", "Value": balancer_arn.partition(":loadbalancer/")[2]}])
    return int(sum(point.get("Sum", 0) for point in stats.get("Datapoints", [])))


def plan_retire_routes(plan: Plan, release: Release, environment: Environment, *, force: bool,
                       quiet_minutes: int) -> Optional[str]:
    """Take the version out of the listener: its rules go, the rule of OIP's unversioned paths
    moves to the highest version left. Refused while the version's target group served requests
    in the last `quiet_minutes` (clients still call it), unless `force`. The group's ARN, if any."""
    elb = aws.client(environment, "elbv2")
    group = _find_target_group(elb, target_group_name(release))
    rules = list(_rules(elb, environment.listener))
    arn = group["TargetGroupArn"] if group else None
    if arn and not force:
        listener = _describe_listener(elb, environment)
        served = recent_requests(environment, arn, listener["LoadBalancerArn"], quiet_minutes)
        if served:
            raise ConfigError(f"{release.name} v{release.version} in environment {environment.name!r} served "
                              f"{served} requests in the last {quiet_minutes} minutes: its clients still call "
                              f"it. Move them to another version first, or retire it anyway with --force")
    for kind in (VERSION, OIP_VERSION):
        rule = _find_rule(rules, release, environment, kind)
        if rule is not None:
            plan.add(DELETE, f"listener rule {release.hostname(environment)} {', '.join(rule_paths(release, kind))}",
                     f"priority {rule['Priority']}", lambda rule=rule: elb.delete_rule(RuleArn=rule["RuleArn"]))
    latest = _find_rule(rules, release, environment, OIP_LATEST)
    if latest is not None and arn and _forwards_to(latest) == [arn]:
        others = sorted(v for v in _versions_routed(rules, release, environment) if v != release.version)
        if others:
            successor = dataclasses.replace(release, settings=dataclasses.replace(release.settings, version=others[-1]))
            successor_group = _find_target_group(elb, target_group_name(successor))
            if successor_group:
                plan.add(UPDATE, f"listener rule {release.hostname(environment)} {', '.join(OIP_UNVERSIONED_PATHS)}",
                         f"forward to version {others[-1]} (the highest left)",
                         lambda: elb.modify_rule(RuleArn=latest["RuleArn"],
                                                 Actions=_forward(successor_group["TargetGroupArn"])))
        else:
            plan.add(DELETE, f"listener rule {release.hostname(environment)} {', '.join(OIP_UNVERSIONED_PATHS)}",
                     "no version of the model is left", lambda: elb.delete_rule(RuleArn=latest["RuleArn"]))
    return arn


def plan_delete_target_group(plan: Plan, release: Release, environment: Environment, arn: Optional[str]) -> None:
    if arn:
        elb = aws.client(environment, "elbv2")
        plan.add(DELETE, f"target group {target_group_name(release)}", "",
                 lambda: elb.delete_target_group(TargetGroupArn=arn))
