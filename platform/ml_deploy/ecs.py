"""The `fargate` and `ecs` computes: one ECS service per model version, behind the ALB.

    cluster (environment.cluster)          created if missing
      service ml-iris-v1                   launch type FARGATE (`fargate`) or EC2 (`ecs`),
        task definition ml-iris-v1:N         awsvpc, deployment circuit breaker with rollback
          container `model`                 the image by digest, port 8080, logs to /ml/iris
        target group ml-iris-v1            target type ip (see alb.py)
    listener rule iris.ml.<domain>/v1/*    -> the target group

Both computes use the awsvpc network mode: every task gets its own address and the
environment's security groups, so the target group (type ip, port 8080) and the service's
network configuration are the same for both, and tasks of two versions on one EC2 instance
never compete for a host port as they would with `bridge` and fixed ports. Its cost is one ENI
per task on EC2 instances (turn on ENI trunking, the `awsvpcTrunking` account setting, for
dense GPU hosts).

A new image or new settings register a new task definition revision and move the service to it;
ECS replaces the tasks and its deployment circuit breaker rolls the service back to the previous
revision if the new tasks do not get healthy, so the previous version keeps serving. A revision
registered by an earlier, failed deploy with the same settings is reused, not registered again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from ml_deploy import alb, aws, ecr_repository, publish, secrets
from ml_deploy.config import ConfigError, Environment
from ml_deploy.plan import CREATE, UNCHANGED, UPDATE, Plan
from ml_contract.package_layout import CONTAINER_PORT

from ml_deploy.release import Release

CONTAINER = "model"  # the container's name in every task definition
LAUNCH_TYPES = {"fargate": "FARGATE", "ecs": "EC2"}
SPEC_TAG = "ml.spec"  # tag of a task definition: the fingerprint of what it was registered with
DEPLOYMENT = {
    "deploymentCircuitBreaker": {"enable": True, "rollback": True},
    # Start the new tasks before stopping the old ones: a deploy never lowers capacity.
    "maximumPercent": 200,
    "minimumHealthyPercent": 100,
}
# Fargate's task sizes: vCPU units -> the memory sizes (MiB) allowed with them.
FARGATE_SIZES = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}
TASK_DEFINITION_ARN = "task_definition_arn"  # key of the outputs the steps share


def log_group(release: Release) -> str:
    """One CloudWatch Logs group per model (all its versions; streams say which)."""
    return f"/ml/{release.name}"


def cpu_units(release: Release) -> int:
    return int(round(release.settings.effective_cpu * 1024))


@dataclass
class State:
    """What ECS holds for the version, read with read-only calls before planning."""

    cluster_exists: bool
    service: Optional[Mapping[str, Any]]  # the ACTIVE service, or None
    current: Optional[Mapping[str, Any]]  # the service's task definition
    current_tags: Dict[str, str]
    latest: Optional[Mapping[str, Any]]  # the newest ACTIVE revision of the family
    latest_tags: Dict[str, str]
    container_instances: int  # ACTIVE container instances of the cluster (EC2 capacity)

    def serving(self) -> str:
        if self.service is None:
            return "nothing (new service)"
        arn = self.service["taskDefinition"]
        digest = _digest_of(self.current) if self.current else None
        return f"service {self.service['serviceName']} on task definition {_revision(arn)} ({digest or 'image unknown'})"


def plan(release: Release, environment: Environment) -> Plan:
    """Push, cluster, log group, target group, listener rule, task definition, service."""
    _check(release, environment)
    ecs = aws.client(environment, "ecs")
    state = read_state(ecs, release, environment)
    result = Plan(target=f"{release.name} v{release.version} -> {release.compute} ({environment.name})",
                  digest=release.digest, serving=state.serving())
    outputs: Dict[str, str] = {}
    publish.plan_push(result, release, environment)
    ecr_repository.plan_repository(result, release, environment, lambda_pull=False)
    _plan_cluster(result, ecs, environment, state)
    aws.plan_log_group(result, environment, log_group(release))
    alb.plan_target_group(result, release, environment, target_type="ip", outputs=outputs)
    # The rule comes before the service: ECS refuses a service whose target group is on no load
    # balancer, and the rule is what attaches the group to the listener's load balancer.
    alb.plan_listener_rule(result, release, environment, outputs)
    found = secrets.sources(release.settings.secrets, environment, release.name, secrets.AWS_KINDS)
    arns = secrets.aws_arns(found, lambda service: aws.client(environment, service))
    _plan_task_definition(result, ecs, release, environment, state, outputs, arns)
    _plan_service(result, ecs, release, environment, state, outputs)
    return result


def task_definition(release: Release, environment: Environment,
                    secret_arns: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The register_task_definition arguments for the release (without tags); `secret_arns`:
    the ARN of each of the model's secrets, which ECS reads with the execution role at start."""
    container: Dict[str, Any] = {
        "name": CONTAINER,
        "image": release.image_uri(environment),
        "essential": True,
        "portMappings": [{"containerPort": CONTAINER_PORT, "hostPort": CONTAINER_PORT, "protocol": "tcp"}],
        "environment": [{"name": k, "value": v} for k, v in sorted(release.runtime_env(environment).items())],
        "dockerLabels": release.labels(),
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": log_group(release),
            "awslogs-region": environment.region,
            "awslogs-stream-prefix": f"v{release.version}",
        }},
    }
    if secret_arns:
        container["secrets"] = [{"name": k, "valueFrom": v} for k, v in sorted(secret_arns.items())]
    if release.settings.gpu:
        container["resourceRequirements"] = [{"type": "GPU", "value": str(release.settings.gpu)}]
    spec: Dict[str, Any] = {
        "family": release.resource_name,
        "requiresCompatibilities": [LAUNCH_TYPES[release.compute]],
        "networkMode": "awsvpc",
        "cpu": str(cpu_units(release)),
        "memory": str(release.settings.effective_memory),
        "executionRoleArn": environment.execution_role,
        "containerDefinitions": [container],
    }
    if environment.task_role:
        spec["taskRoleArn"] = environment.task_role
    return spec


def fingerprint(spec: Mapping[str, Any]) -> str:
    # Compared instead of the registered definition itself, which ECS returns with defaults
    # filled in (cpu 0, empty mountPoints, ...) that would make every deploy look like a change.
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def read_state(ecs: Any, release: Release, environment: Environment) -> State:
    cluster = environment.cluster
    found = ecs.describe_clusters(clusters=[cluster]).get("clusters", [])
    cluster_exists = any(c.get("status") == "ACTIVE" for c in found)
    service = current = latest = None
    current_tags: Dict[str, str] = {}
    latest_tags: Dict[str, str] = {}
    instances = 0
    if cluster_exists:
        services = ecs.describe_services(cluster=cluster, services=[release.resource_name]).get("services", [])
        for s in services:
            if s.get("status") == "DRAINING":
                raise ConfigError(f"ECS service {release.resource_name} in cluster {cluster} is being deleted "
                                  f"(DRAINING); deploy again once it is gone")
            if s.get("status") == "ACTIVE":
                service = s
        if service is not None:
            current, current_tags = _describe_task_definition(ecs, service["taskDefinition"])
        if release.compute == "ecs":
            instances = len(ecs.list_container_instances(cluster=cluster, status="ACTIVE")
                            .get("containerInstanceArns", []))
    latest, latest_tags = _describe_task_definition(ecs, release.resource_name)
    return State(cluster_exists, service, current, current_tags, latest, latest_tags, instances)


def _check(release: Release, environment: Environment) -> None:
    why = f"deploying {release.name} v{release.version} to {release.compute}"
    environment.require("registry", "region", "cluster", "vpc", "subnets", "security_groups", "listener",
                        "execution_role", why=why)
    where = release.settings.address or release.name
    if release.compute == "fargate":
        if release.settings.gpu:
            raise ConfigError(f"{where}: Fargate has no GPUs, but the model asks for gpu={release.settings.gpu}; "
                              f"deploy it to compute='ecs' (GPU container instances) or 'ec2'")
        memories = FARGATE_SIZES.get(cpu_units(release))
        if memories is None or release.settings.effective_memory not in memories:
            sizes = "; ".join(f"cpu={units / 1024:g}: memory {', '.join(map(str, m[:3]))}"
                              f"{' ... ' + str(m[-1]) if len(m) > 3 else ''}" for units, m in FARGATE_SIZES.items())
            raise ConfigError(f"{where}: cpu={release.settings.effective_cpu:g} with memory={release.settings.effective_memory} MiB is not a "
                              f"Fargate task size; Fargate allows {sizes}")
    elif release.settings.effective_cpu <= 0 or release.settings.effective_memory <= 0:
        raise ConfigError(f"{where}: cpu and memory must be positive for ECS (cpu={release.settings.effective_cpu}, "
                          f"memory={release.settings.effective_memory})")


def _plan_cluster(result: Plan, ecs: Any, environment: Environment, state: State) -> None:
    name = environment.cluster
    resource = f"ECS cluster {name}"
    if state.cluster_exists:
        result.add(UNCHANGED, resource)
        return

    def create() -> None:
        ecs.create_cluster(clusterName=name, tags=[{"key": "ml.platform", "value": "true"}])

    result.add(CREATE, resource, "", create)


def _plan_task_definition(result: Plan, ecs: Any, release: Release, environment: Environment,
                          state: State, outputs: Dict[str, str], secret_arns: Mapping[str, str]) -> None:
    spec = task_definition(release, environment, secret_arns)
    wanted = fingerprint(spec)
    family = release.resource_name
    resource = f"ECS task definition {family}"
    if state.current is not None and state.current_tags.get(SPEC_TAG) == wanted:
        arn = outputs[TASK_DEFINITION_ARN] = state.current["taskDefinitionArn"]
        result.add(UNCHANGED, resource, f"{_revision(arn)} runs {release.digest}")
        return
    if state.latest is not None and state.latest_tags.get(SPEC_TAG) == wanted:
        # Registered by a deploy that failed after this step: the same settings, so reuse it.
        arn = outputs[TASK_DEFINITION_ARN] = state.latest["taskDefinitionArn"]
        result.add(UNCHANGED, resource, f"{_revision(arn)} (registered before) runs {release.digest}")
        return

    tags = [{"key": k, "value": v} for k, v in {**release.labels(), SPEC_TAG: wanted}.items()]

    def register() -> str:
        registered = ecs.register_task_definition(**spec, tags=tags)["taskDefinition"]
        outputs[TASK_DEFINITION_ARN] = registered["taskDefinitionArn"]
        return _revision(registered["taskDefinitionArn"])

    size = f"{release.settings.effective_cpu:g} vCPU, {release.settings.effective_memory} MiB" + (f", {release.settings.gpu} GPU" if release.settings.gpu else "")
    if state.latest is None:
        result.add(CREATE, resource, f"image {release.image_uri(environment)}, {size}", register)
        return
    changes = _differences(state.current or state.latest, spec)
    result.add(UPDATE, resource, f"new revision: {'; '.join(changes) or size}", register)


def _grace(release: Release) -> int:
    """Models load before /v2/health/ready answers: failed load-balancer checks meanwhile must
    not stop the task."""
    return release.settings.load_timeout


def _plan_service(result: Plan, ecs: Any, release: Release, environment: Environment, state: State,
                  outputs: Dict[str, str]) -> None:
    name = release.resource_name
    cluster = environment.cluster
    launch_type = LAUNCH_TYPES[release.compute]
    resource = f"ECS service {name}"
    network = _network(release, environment)

    def load_balancers() -> List[Dict[str, Any]]:
        return [{"targetGroupArn": outputs[alb.TARGET_GROUP_ARN], "containerName": CONTAINER,
                 "containerPort": CONTAINER_PORT}]

    warning = ""
    if release.compute == "ecs" and state.container_instances == 0:
        gpu = " with GPUs" if release.settings.gpu else ""
        warning = (f" (cluster {cluster} has no EC2 container instances: its tasks wait, PENDING, "
                   f"until instances{gpu} join it)")

    service = state.service
    if service is None:
        def create() -> str:
            ecs.create_service(
                cluster=cluster, serviceName=name, taskDefinition=outputs[TASK_DEFINITION_ARN],
                desiredCount=1, launchType=launch_type, loadBalancers=load_balancers(),
                networkConfiguration=network, deploymentConfiguration=DEPLOYMENT,
                healthCheckGracePeriodSeconds=_grace(release),
                propagateTags="SERVICE", enableECSManagedTags=True,
                tags=[{"key": k, "value": v} for k, v in release.labels().items()])
            return f"starting 1 task of {_revision(outputs[TASK_DEFINITION_ARN])}"

        result.add(CREATE, resource, f"launch type {launch_type}, 1 task, behind target group "
                                     f"{alb.target_group_name(release)}{warning}", create)
        return

    if service.get("launchType") and service["launchType"] != launch_type:
        raise ConfigError(
            f"{resource} in cluster {cluster} runs on {service['launchType']}, but {release.name} "
            f"v{release.version} is to run on {launch_type} (compute {release.compute}); ECS cannot "
            f"change a service's launch type: delete the service, or deploy a new model version")
    current_arn = service["taskDefinition"]
    changes = []
    if outputs.get(TASK_DEFINITION_ARN) != current_arn:
        changes.append(f"task definition {_revision(current_arn)} -> "
                       f"{_revision(outputs[TASK_DEFINITION_ARN]) if TASK_DEFINITION_ARN in outputs else 'the new revision'}")
    lb_changed = (alb.TARGET_GROUP_ARN not in outputs
                  or _lb_key(service.get("loadBalancers", [])) != _lb_key(load_balancers()))
    if lb_changed:
        changes.append("load balancer target group")
    network_changed = _network_key(service.get("networkConfiguration")) != _network_key(network)
    if network_changed:
        changes.append("subnets / security groups")
    # moto does not keep deploymentConfiguration; ECS returns it, and then it is compared too.
    grace = service.get("healthCheckGracePeriodSeconds")
    if grace is not None and grace != _grace(release):
        changes.append(f"health-check grace {grace} s -> {_grace(release)} s")
    reported = service.get("deploymentConfiguration")
    if reported is not None and _deployment_key(reported) != _deployment_key(DEPLOYMENT):
        changes.append("deployment circuit breaker")
    if not changes:
        result.add(UNCHANGED, resource, f"on {_revision(current_arn)}")
        return

    def update() -> str:
        # desiredCount is left alone: autoscaling or an operator may have changed it.
        extra: Dict[str, Any] = {}
        if lb_changed:
            extra["loadBalancers"] = load_balancers()
        if network_changed:
            extra["networkConfiguration"] = network
        ecs.update_service(cluster=cluster, service=name, taskDefinition=outputs[TASK_DEFINITION_ARN],
                           deploymentConfiguration=DEPLOYMENT,
                           healthCheckGracePeriodSeconds=_grace(release), **extra)
        return (f"rolling out {_revision(outputs[TASK_DEFINITION_ARN])}; ECS rolls back to "
                f"{_revision(current_arn)} if its tasks do not get healthy (deployment circuit breaker)")

    result.add(UPDATE, resource, "; ".join(changes) + warning, update)


def _network(release: Release, environment: Environment) -> Dict[str, Any]:
    config: Dict[str, Any] = {"subnets": list(environment.subnets),
                              "securityGroups": list(environment.security_groups)}
    if release.compute == "fargate":
        # Private subnets: the image comes through a NAT or VPC endpoints, traffic through the ALB.
        config["assignPublicIp"] = "DISABLED"
    return {"awsvpcConfiguration": config}


def _network_key(config: Optional[Mapping[str, Any]]) -> Any:
    vpc = (config or {}).get("awsvpcConfiguration") or {}
    return (sorted(vpc.get("subnets", [])), sorted(vpc.get("securityGroups", [])),
            vpc.get("assignPublicIp", "DISABLED"))


def _lb_key(balancers: List[Mapping[str, Any]]) -> Any:
    return sorted((b.get("targetGroupArn"), b.get("containerName"), b.get("containerPort")) for b in balancers)


def _deployment_key(config: Mapping[str, Any]) -> Any:
    breaker = config.get("deploymentCircuitBreaker") or {}
    return (breaker.get("enable"), breaker.get("rollback"), config.get("maximumPercent"),
            config.get("minimumHealthyPercent"))


def _describe_task_definition(ecs: Any, name: str) -> Any:
    try:
        found = ecs.describe_task_definition(taskDefinition=name, include=["TAGS"])
    except Exception as e:
        # ECS says ClientException ("Unable to describe task definition") for a missing one.
        if aws.error_code(e) == "ClientException":
            return None, {}
        raise
    return found["taskDefinition"], {t["key"]: t["value"] for t in found.get("tags") or []}


def _differences(current: Mapping[str, Any], spec: Mapping[str, Any]) -> List[str]:
    """What a new revision changes, for the plan (the fingerprint decides whether it does)."""
    changes = []
    was = (current.get("containerDefinitions") or [{}])[0]
    now = spec["containerDefinitions"][0]
    if _digest_of(current) != now["image"].rpartition("@")[2]:
        changes.append(f"image {_digest_of(current) or was.get('image')} -> {now['image'].rpartition('@')[2]}")
    for key, unit in (("cpu", " units"), ("memory", " MiB")):
        if str(current.get(key)) != spec[key]:
            changes.append(f"{key} {current.get(key)} -> {spec[key]}{unit}")
    if sorted((e["name"], e["value"]) for e in was.get("environment") or []) != \
            [(e["name"], e["value"]) for e in now["environment"]]:
        changes.append("environment variables")
    if (was.get("secrets") or []) != (now.get("secrets") or []):
        changes.append("secrets: " + (", ".join(f"{e['name']} <- {e['valueFrom']}" for e in now.get("secrets") or []) or "none"))
    if (was.get("resourceRequirements") or []) != (now.get("resourceRequirements") or []):
        changes.append(f"GPUs -> {now.get('resourceRequirements', [{}])[0].get('value', 0)}")
    return changes


def _digest_of(definition: Optional[Mapping[str, Any]]) -> Optional[str]:
    containers = (definition or {}).get("containerDefinitions") or []
    image = next((c.get("image", "") for c in containers if c.get("name") == CONTAINER), "")
    return image.rpartition("@")[2] if "@sha256:" in image else None


def _revision(arn: str) -> str:
    """family:revision of a task definition ARN."""
    return arn.rpartition("/")[2]
