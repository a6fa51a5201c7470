"""The `fargate` and `ecs` computes: one ECS service per model version, behind the ALB.

    cluster (environment.cluster)          created if missing, with the model's capacity provider
      service ml-iris-v1                   launch type FARGATE (`fargate`), or the capacity
        task definition ml-iris-v1:N         provider (`ecs`); awsvpc, circuit breaker with rollback
          container `model`                 the image by digest, port 8080, logs to /ml/iris
        target group ml-iris-v1            target type ip (see alb.py)
        autoscaling                        min_replicas..max_replicas, target tracking
    listener rules iris.ml.<domain>        /v1/* and the OIP paths -> the target group

Both computes use the awsvpc network mode: every task gets its own address and the
environment's security groups, so the target group (type ip, port 8080) and the service's
network configuration are the same for both, and tasks of two versions on one EC2 instance
never compete for a host port as they would with `bridge` and fixed ports. Its cost is one ENI
per task on EC2 instances (turn on ENI trunking, the `awsvpcTrunking` account setting, for
dense GPU hosts).

`ecs` tasks are placed by a capacity provider, never by launch type EC2: capacity providers'
managed scaling starts instances only for tasks placed through them, so a launch-type task in a
cluster of capacity providers waits PENDING for ever.

A new image or new settings register a new task definition revision and move the service to it;
ECS replaces the tasks and its deployment circuit breaker rolls the service back to the previous
revision if the new tasks do not get healthy, so the previous version keeps serving. The deploy
waits for that deployment's rolloutState: COMPLETED, or FAILED with the reasons. A revision
registered by an earlier, failed deploy with the same settings is reused, not registered again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from ml_deploy import alb, aws, ecr_repository, publish, secrets
from ml_deploy.config import ConfigError, Environment
from ml_deploy.plan import CREATE, DELETE, UNCHANGED, UPDATE, Plan
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
# GPU tasks on a capacity provider without managed scaling: no second GPU instance appears for
# the new task, so the old one stops first (a gap in service, said in the plan).
IN_PLACE_DEPLOYMENT = {**DEPLOYMENT, "maximumPercent": 100, "minimumHealthyPercent": 0}
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
SCALABLE_DIMENSION = "ecs:service:DesiredCount"
SCALING_POLICY = "ml-target-tracking"
# Scale out fast (a model's queue builds in seconds), in slowly (a new task takes minutes to load).
SCALE_OUT_COOLDOWN, SCALE_IN_COOLDOWN = 60, 300


def log_group(release: Release) -> str:
    """One CloudWatch Logs group per model (all its versions; streams say which)."""
    return f"/ml/{release.name}"


def cpu_units(release: Release) -> int:
    return int(round(release.settings.effective_cpu * 1024))


@dataclass
class State:
    """What ECS holds for the version, read with read-only calls before planning."""

    cluster: Optional[Mapping[str, Any]]  # the ACTIVE cluster, or None
    service: Optional[Mapping[str, Any]]  # the ACTIVE service, or None
    current: Optional[Mapping[str, Any]]  # the service's task definition
    current_tags: Dict[str, str]
    latest: Optional[Mapping[str, Any]]  # the newest ACTIVE revision of the family
    latest_tags: Dict[str, str]
    provider: Optional[Mapping[str, Any]]  # the capacity provider `ecs` places the model with

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
    _plan_cluster(result, ecs, release, environment, state)
    aws.plan_log_group(result, environment, log_group(release))
    alb.plan_target_group(result, release, environment, target_type="ip", outputs=outputs)
    # The rule comes before the service: ECS refuses a service whose target group is on no load
    # balancer, and the rule is what attaches the group to the listener's load balancer.
    alb.plan_listener_rule(result, release, environment, outputs)
    found = secrets.sources(release.settings.secrets, environment, release.name, secrets.AWS_KINDS)
    arns = secrets.aws_arns(found, lambda service: aws.client(environment, service))
    _plan_task_definition(result, ecs, release, environment, state, outputs, arns)
    _plan_service(result, ecs, release, environment, state, outputs)
    _plan_scaling(result, release, environment, outputs)
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
    active = next((c for c in found if c.get("status") == "ACTIVE"), None)
    service = current = latest = None
    current_tags: Dict[str, str] = {}
    latest_tags: Dict[str, str] = {}
    if active is not None:
        services = ecs.describe_services(cluster=cluster, services=[release.resource_name]).get("services", [])
        for s in services:
            if s.get("status") == "DRAINING":
                raise ConfigError(f"ECS service {release.resource_name} in cluster {cluster} is being deleted "
                                  f"(DRAINING); deploy again once it is gone")
            if s.get("status") == "ACTIVE":
                service = s
        if service is not None:
            current, current_tags = _describe_task_definition(ecs, service["taskDefinition"])
    provider = None
    name = capacity_provider(release, environment)
    if name:
        found_providers = ecs.describe_capacity_providers(capacityProviders=[name]).get("capacityProviders", [])
        provider = next((p for p in found_providers if p.get("status") == "ACTIVE"), None)
        if provider is None:
            setting = "gpu_capacity_provider" if release.settings.gpu else "capacity_provider"
            raise ConfigError(f"environment {environment.name!r}: `{setting}` names ECS capacity provider {name}, "
                              f"which does not exist (or is being deleted): create it (infra/ does) or correct "
                              f"`{setting}`")
    latest, latest_tags = _describe_task_definition(ecs, release.resource_name)
    return State(active, service, current, current_tags, latest, latest_tags, provider)


def _check(release: Release, environment: Environment) -> None:
    why = f"deploying {release.name} v{release.version} to {release.compute}"
    environment.require("registry", "region", "cluster", "vpc", "subnets", "security_groups", "listener",
                        "execution_role", why=why)
    if release.compute == "ecs":
        # Tasks with a launch type are never placed by capacity providers' managed scaling: an
        # empty cluster would leave them PENDING for ever.
        environment.require("gpu_capacity_provider" if release.settings.gpu else "capacity_provider",
                            why=f"{why} (the Auto Scaling group its tasks are placed on)")
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


def capacity_provider(release: Release, environment: Environment) -> Optional[str]:
    """The capacity provider an `ecs` model's tasks are placed with (None: Fargate)."""
    if release.compute != "ecs":
        return None
    return environment.gpu_capacity_provider if release.settings.gpu else environment.capacity_provider


def deployment_configuration(release: Release, state: State) -> Dict[str, Any]:
    managed = ((state.provider or {}).get("autoScalingGroupProvider") or {}).get("managedScaling") or {}
    if release.settings.gpu and managed.get("status") != "ENABLED":
        return IN_PLACE_DEPLOYMENT
    return DEPLOYMENT


def _plan_cluster(result: Plan, ecs: Any, release: Release, environment: Environment, state: State) -> None:
    name = environment.cluster
    resource = f"ECS cluster {name}"
    provider = capacity_provider(release, environment)
    if state.cluster is not None:
        attached = list(state.cluster.get("capacityProviders") or [])
        if not provider or provider in attached:
            result.add(UNCHANGED, resource, f"capacity providers {', '.join(attached)}" if attached else "")
            return

        def attach() -> None:
            # The list replaces the cluster's: every provider it had stays, and its default strategy.
            ecs.put_cluster_capacity_providers(
                cluster=name, capacityProviders=[*attached, provider],
                defaultCapacityProviderStrategy=list(state.cluster.get("defaultCapacityProviderStrategy") or []))

        result.add(UPDATE, resource, f"attach capacity provider {provider}", attach)
        return

    def create() -> None:
        extra = {"capacityProviders": [provider]} if provider else {}
        ecs.create_cluster(clusterName=name, tags=[{"key": "ml.platform", "value": "true"}], **extra)

    result.add(CREATE, resource, f"capacity provider {provider}" if provider else "", create)


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
    return release.settings.effective_load_timeout


def placement(release: Release, environment: Environment) -> Dict[str, Any]:
    """How the service's tasks are placed: Fargate by launch type, `ecs` by its capacity
    provider (whose managed scaling adds instances for tasks waiting for room)."""
    provider = capacity_provider(release, environment)
    if provider:
        return {"capacityProviderStrategy": [{"capacityProvider": provider, "weight": 1, "base": 0}]}
    return {"launchType": LAUNCH_TYPES[release.compute]}


def _placement_key(placed: Mapping[str, Any]) -> Any:
    strategy = placed.get("capacityProviderStrategy") or []
    if strategy:
        return ("capacity providers", tuple(sorted(p["capacityProvider"] for p in strategy)))
    return ("launch type", placed.get("launchType"))


def _describe_placement(key: Any) -> str:
    kind, value = key
    return f"capacity provider {', '.join(value)}" if kind == "capacity providers" else f"launch type {value}"


def _plan_service(result: Plan, ecs: Any, release: Release, environment: Environment, state: State,
                  outputs: Dict[str, str]) -> None:
    name = release.resource_name
    cluster = environment.cluster
    resource = f"ECS service {name}"
    network = _network(release, environment)
    placed = placement(release, environment)
    deployment = deployment_configuration(release, state)
    gap = (" (no managed scaling on the GPU capacity provider: the old task stops before the new one "
           "starts)" if deployment is IN_PLACE_DEPLOYMENT else "")

    def load_balancers() -> List[Dict[str, Any]]:
        return [{"targetGroupArn": outputs[alb.TARGET_GROUP_ARN], "containerName": CONTAINER,
                 "containerPort": CONTAINER_PORT}]

    service = state.service
    if service is None:
        def create() -> str:
            created = ecs.create_service(
                cluster=cluster, serviceName=name, taskDefinition=outputs[TASK_DEFINITION_ARN],
                desiredCount=release.settings.min_replicas, loadBalancers=load_balancers(), networkConfiguration=network,
                deploymentConfiguration=deployment, healthCheckGracePeriodSeconds=_grace(release),
                propagateTags="SERVICE", enableECSManagedTags=True,
                tags=[{"key": k, "value": v} for k, v in release.labels().items()], **placed)["service"]
            return _await_rollout(result, ecs, release, environment, created, previous=None)

        result.add(CREATE, resource, f"{_describe_placement(_placement_key(placed))}, "
                                     f"{release.settings.min_replicas} task(s), behind target group "
                                     f"{alb.target_group_name(release)}", create)
        return

    now, wanted = _placement_key(service), _placement_key(placed)
    if (now == ("launch type", "FARGATE")) != (release.compute == "fargate"):
        raise ConfigError(
            f"{resource} in cluster {cluster} runs on {_describe_placement(now)}, but {release.name} "
            f"v{release.version} is to run on {_describe_placement(wanted)} (compute {release.compute}); ECS "
            f"cannot move a service between Fargate and EC2: delete the service, or deploy a new model version")
    current_arn = service["taskDefinition"]
    changes = []
    if outputs.get(TASK_DEFINITION_ARN) != current_arn:
        changes.append(f"task definition {_revision(current_arn)} -> "
                       f"{_revision(outputs[TASK_DEFINITION_ARN]) if TASK_DEFINITION_ARN in outputs else 'the new revision'}")
    placement_changed = now != wanted
    if placement_changed:
        changes.append(f"{_describe_placement(now)} -> {_describe_placement(wanted)}")
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
    if reported is not None and _deployment_key(reported) != _deployment_key(deployment):
        changes.append("deployment configuration")
    # Autoscaling owns the count of an autoscaled service; a fixed one is the model's min_replicas.
    fixed = release.settings.effective_max_replicas == release.settings.min_replicas
    count_changed = fixed and service.get("desiredCount") not in (None, release.settings.min_replicas)
    if count_changed:
        changes.append(f"tasks {service.get('desiredCount')} -> {release.settings.min_replicas}")
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
        if count_changed:
            extra["desiredCount"] = release.settings.min_replicas
        if placement_changed:
            # From a launch type to a capacity provider strategy: ECS requires a new deployment.
            extra.update(placed, forceNewDeployment=True)
            extra.pop("launchType", None)
        updated = ecs.update_service(cluster=cluster, service=name, taskDefinition=outputs[TASK_DEFINITION_ARN],
                                     deploymentConfiguration=deployment,
                                     healthCheckGracePeriodSeconds=_grace(release), **extra)["service"]
        return _await_rollout(result, ecs, release, environment, updated, previous=current_arn)

    result.add(UPDATE, resource, "; ".join(changes) + gap, update)


def scaling_resource_id(release: Release, environment: Environment) -> str:
    return f"service/{environment.cluster}/{release.resource_name}"


def scaling_policy(release: Release, environment: Environment, outputs: Mapping[str, str]) -> Dict[str, Any]:
    """The target tracking configuration of the model's `target_requests` or `target_cpu`."""
    settings = release.settings
    if settings.target_cpu is not None:
        metric: Dict[str, Any] = {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"}
        value = float(settings.target_cpu)
    else:
        # ALB's label of the group: app/<balancer>/<id>/targetgroup/<group>/<id>.
        balancer = outputs[alb.LOAD_BALANCER_ARN].partition(":loadbalancer/")[2]
        group = outputs[alb.TARGET_GROUP_ARN].rpartition(":")[2]
        metric = {"PredefinedMetricType": "ALBRequestCountPerTarget", "ResourceLabel": f"{balancer}/{group}"}
        value = float(settings.target_requests or 0)
    return {"TargetValue": value, "PredefinedMetricSpecification": metric,
            "ScaleOutCooldown": SCALE_OUT_COOLDOWN, "ScaleInCooldown": SCALE_IN_COOLDOWN}


def _plan_scaling(result: Plan, release: Release, environment: Environment, outputs: Dict[str, str]) -> None:
    """Application Auto Scaling of the service between min_replicas and max_replicas."""
    scaling = aws.client(environment, "application-autoscaling")
    resource_id = scaling_resource_id(release, environment)
    resource = f"autoscaling of ECS service {release.resource_name}"
    low, high = release.settings.min_replicas, release.settings.effective_max_replicas
    targets = scaling.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[resource_id],
                                                ScalableDimension=SCALABLE_DIMENSION)["ScalableTargets"]
    current = targets[0] if targets else None
    if high == low:
        if current is None:
            result.add(UNCHANGED, resource, f"none: {low} task(s)")
            return

        def stop() -> None:
            scaling.deregister_scalable_target(ServiceNamespace="ecs", ResourceId=resource_id,
                                               ScalableDimension=SCALABLE_DIMENSION)

        result.add(DELETE, resource, f"the model declares {low} task(s), no max_replicas", stop)
        return
    policies = scaling.describe_scaling_policies(ServiceNamespace="ecs", ResourceId=resource_id,
                                                 PolicyNames=[SCALING_POLICY])["ScalingPolicies"] if current else []
    now = (policies[0].get("TargetTrackingScalingPolicyConfiguration") if policies else None)
    known = alb.TARGET_GROUP_ARN in outputs
    wanted = scaling_policy(release, environment, outputs) if known else None
    same_bounds = current is not None and (current["MinCapacity"], current["MaxCapacity"]) == (low, high)
    if same_bounds and wanted is not None and _policy_key(now) == _policy_key(wanted):
        result.add(UNCHANGED, resource, f"{low}-{high} tasks on {_describe_target(release)}")
        return

    def apply() -> str:
        scaling.register_scalable_target(ServiceNamespace="ecs", ResourceId=resource_id,
                                         ScalableDimension=SCALABLE_DIMENSION, MinCapacity=low, MaxCapacity=high)
        scaling.put_scaling_policy(PolicyName=SCALING_POLICY, ServiceNamespace="ecs", ResourceId=resource_id,
                                   ScalableDimension=SCALABLE_DIMENSION, PolicyType="TargetTrackingScaling",
                                   TargetTrackingScalingPolicyConfiguration=scaling_policy(release, environment, outputs))
        return f"{low}-{high} tasks"

    result.add(CREATE if current is None else UPDATE, resource,
               f"{low}-{high} tasks, target tracking on {_describe_target(release)}", apply)


def _describe_target(release: Release) -> str:
    if release.settings.target_cpu is not None:
        return f"{release.settings.target_cpu}% CPU"
    return f"{release.settings.target_requests} requests per task per minute"


def _policy_key(config: Optional[Mapping[str, Any]]) -> Any:
    if not config:
        return None
    metric = config.get("PredefinedMetricSpecification") or {}
    return (float(config.get("TargetValue", 0)), metric.get("PredefinedMetricType"), metric.get("ResourceLabel"))


def _await_rollout(plan: Plan, ecs: Any, release: Release, environment: Environment,
                   service: Mapping[str, Any], *, previous: Optional[str]) -> str:
    """Wait until the deployment this deploy started is COMPLETED (its tasks healthy behind the
    load balancer); if ECS's circuit breaker fails it, say why (the service's events, a stopped
    task's reason) and what serves now."""
    name, cluster = service["serviceName"], environment.cluster
    primary = next((d for d in service.get("deployments", []) if d.get("status") == "PRIMARY"), None)
    if primary is None:
        return f"{name}: ECS reported no new deployment"
    deployment, arn = primary["id"], primary.get("taskDefinition", "")

    def read() -> Any:
        (now,) = ecs.describe_services(cluster=cluster, services=[name])["services"]
        ours = next((d for d in now.get("deployments", []) if d.get("id") == deployment), None)
        if ours is None:
            raise RuntimeError(f"deployment {deployment} of {name} is gone: another deploy replaced it")
        state = ours.get("rolloutState") or ("COMPLETED" if len(now.get("deployments", [])) == 1
                                             and ours.get("runningCount") == ours.get("desiredCount") else "IN_PROGRESS")
        if state == "FAILED":
            raise RuntimeError(_rollout_failure(ecs, cluster, now, ours, previous))
        status = f"{state}, {ours.get('runningCount', 0)} of {ours.get('desiredCount', 0)} tasks running"
        if ours.get("failedTasks"):
            status += f", {ours['failedTasks']} failed"
        events = now.get("events") or []
        if state != "COMPLETED" and events:
            status += f"; ECS: {events[0].get('message', '')}"
        return state == "COMPLETED", status

    what = f"ECS service {name} deployment of {_revision(arn)}"
    try:
        aws.wait_for(what, read, environment, plan.say)
    except aws.RolloutTimedOut as e:
        still = (f"ECS goes on trying; its circuit breaker rolls back to {_revision(previous)} if the tasks "
                 f"keep failing" if previous else "ECS goes on trying to start the first task")
        raise RuntimeError(f"{e}; {still}") from e
    return f"deployment {deployment} COMPLETED: {_revision(arn)} serves"


def _rollout_failure(ecs: Any, cluster: Optional[str], service: Mapping[str, Any], deployment: Mapping[str, Any],
                     previous: Optional[str]) -> str:
    lines = [f"deployment {deployment['id']} of {service['serviceName']} FAILED: "
             f"{deployment.get('rolloutStateReason') or 'no reason given'}"]
    stopped = ecs.list_tasks(cluster=cluster, serviceName=service["serviceName"], desiredStatus="STOPPED")["taskArns"]
    if stopped:
        for task in ecs.describe_tasks(cluster=cluster, tasks=stopped[:3]).get("tasks", []):
            reasons = [c.get("reason") for c in task.get("containers", []) if c.get("reason")]
            lines.append(f"stopped task {task['taskArn'].rpartition('/')[2]}: "
                         f"{task.get('stoppedReason') or task.get('stopCode') or 'no reason'}"
                         + (f" ({'; '.join(reasons)})" if reasons else ""))
    lines += [f"ECS: {e.get('message', '')}" for e in (service.get("events") or [])[:3]]
    lines.append(f"the circuit breaker rolled the service back to {_revision(previous)}, which serves" if previous
                 else "nothing serves: the service has no earlier task definition")
    return "\n    ".join(lines)


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
