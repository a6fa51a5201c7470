"""Retiring a model version on AWS: its routes, then what runs it, then its target group.

    python -m ml_deploy retire --env prod --model iris --model-version 1 --compute fargate [--dry-run] [--force]

Like a deploy, a plan worked out with read-only calls, then carried out. Nothing routes to the
version any more before anything of it goes: its listener rules are deleted first (the rule of
the Open Inference Protocol's unversioned paths moves to the highest version left), and the
version is refused while its target group served requests lately (clients still call it;
`--force` retires it anyway). Its images stay in the registry: every one keeps its
`v<N>-<digest>` tag, so a redeploy or a rollback elsewhere can still use it. Log groups stay
until their retention ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml_contract.model_settings import Compute, ModelSettings

from ml_deploy import alb, aws
from ml_deploy.config import ConfigError, Environment
from ml_deploy.ec2 import RESOURCE_TAG, SERVING_STATES
from ml_deploy.ecs import SCALABLE_DIMENSION, scaling_resource_id
from ml_deploy.plan import DELETE, Plan
from ml_deploy.release import Release

QUIET_MINUTES = 60  # a version that served a request in this long still has clients


def plan_retire(name: str, version: int, compute: str, environment: Environment, *, force: bool = False) -> Plan:
    compute = environment.compute or compute
    if Compute(compute) == Compute.LOCAL:
        raise ConfigError(f"{name} v{version} runs locally in environment {environment.name!r}: stop it with "
                          f"`python -m ml_deploy stop --model {name}`")
    # Release's naming rules for the version's resources (the other fields do not matter here).
    release = Release(ModelSettings(name=name, version=version, compute=compute), Path("."), "")
    plan = Plan(target=f"{name} v{version} -> {compute} ({environment.name}): retire", digest="every resource of it",
                serving=f"{name} v{version} (nothing was retired)", done=f"retired {name} v{version}")
    group = None
    if compute != Compute.LAMBDA.value or environment.listener:
        environment.require("listener", why=f"retiring {name} v{version} on {compute}")
        group = alb.plan_retire_routes(plan, release, environment, force=force, quiet_minutes=QUIET_MINUTES)
    {Compute.LAMBDA.value: _plan_function, Compute.EC2.value: _plan_instances}.get(compute, _plan_service)(
        plan, release, environment)
    alb.plan_delete_target_group(plan, release, environment, group)
    if not plan.changes:
        raise ConfigError(f"{name} v{version} has nothing on {compute} in environment {environment.name!r} to retire")
    return plan


def _plan_service(plan: Plan, release: Release, environment: Environment) -> None:
    ecs = aws.client(environment, "ecs")
    name, cluster = release.resource_name, environment.cluster
    scaling = aws.client(environment, "application-autoscaling")
    resource_id = scaling_resource_id(release, environment)
    if scaling.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[resource_id],
                                         ScalableDimension=SCALABLE_DIMENSION)["ScalableTargets"]:
        plan.add(DELETE, f"autoscaling of ECS service {name}", "",
                 lambda: scaling.deregister_scalable_target(ServiceNamespace="ecs", ResourceId=resource_id,
                                                            ScalableDimension=SCALABLE_DIMENSION))
    services = ecs.describe_services(cluster=cluster, services=[name]).get("services", []) if cluster else []
    if any(s.get("status") == "ACTIVE" for s in services):
        def delete() -> None:
            ecs.update_service(cluster=cluster, service=name, desiredCount=0)
            ecs.delete_service(cluster=cluster, service=name, force=True)

        plan.add(DELETE, f"ECS service {name}", "its tasks drain and stop", delete)


def _plan_instances(plan: Plan, release: Release, environment: Environment) -> None:
    ec2 = aws.client(environment, "ec2")
    name = release.resource_name
    reservations = ec2.describe_instances(Filters=[{"Name": f"tag:{RESOURCE_TAG}", "Values": [name]},
                                                   {"Name": "instance-state-name", "Values": list(SERVING_STATES)}])
    ids = [i["InstanceId"] for r in reservations["Reservations"] for i in r["Instances"]]
    if ids:
        plan.add(DELETE, f"EC2 instances of {name}", ", ".join(ids), lambda: ec2.terminate_instances(InstanceIds=ids))
    try:
        ec2.describe_launch_templates(LaunchTemplateNames=[name])
    except Exception as e:
        if aws.error_code(e) != "InvalidLaunchTemplateName.NotFoundException":
            raise
    else:
        plan.add(DELETE, f"EC2 launch template {name}", "",
                 lambda: ec2.delete_launch_template(LaunchTemplateName=name))


def _plan_function(plan: Plan, release: Release, environment: Environment) -> None:
    lam: Any = aws.client(environment, "lambda")
    name = release.resource_name
    try:
        lam.get_function(FunctionName=name)
    except lam.exceptions.ResourceNotFoundException:
        return
    # Its versions, alias, Function URL and permissions go with it.
    plan.add(DELETE, f"Lambda function {name}", "with its versions, alias live and Function URL",
             lambda: lam.delete_function(FunctionName=name))
