"""A model's ECR repository, as the deploys need it: scanned on push, untagged images expired,
and, for Lambda models, pullable by Lambda.

Every image pushed carries a tag naming its digest (`v<N>-<12 hex>`, publish.py) besides the
moving `v<N>`: moving `v<N>` to a new build never leaves the previous digest untagged, so the
lifecycle rule below (untagged only) never deletes an image that serves or that a rollback
needs. Only pushes that never completed (untagged manifests) expire.

Lambda pulls the image itself when a function is created or its code updated: the repository
policy must let `lambda.amazonaws.com` get it (AWS: "Lambda does not have permission to access
the ECR image"), and the image must be in ECR in the function's region.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional

from ml_image.registry import is_ecr_host
from ml_image.registry.ecr import ecr_host_region

from ml_deploy import aws
from ml_deploy.config import ConfigError, Environment
from ml_deploy.plan import CREATE, UNCHANGED, UPDATE, Plan
from ml_deploy.release import Release

LAMBDA_PULL_STATEMENT = "LambdaECRImageRetrievalPolicy"  # the Sid the Lambda console uses
LAMBDA_PULL_ACTIONS = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
UNTAGGED_EXPIRY_DAYS = 14
LIFECYCLE_POLICY = {"rules": [{
    "rulePriority": 1,
    "description": "ml-platform: expire untagged images (interrupted pushes); every pushed image keeps "
                   "its v<N>-<digest> tag",
    "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                  "countNumber": UNTAGGED_EXPIRY_DAYS},
    "action": {"type": "expire"},
}]}


def is_ecr(environment: Environment) -> bool:
    """The registry is ECR, or fronted by ECR's auth (`registry_auth: ecr`, an emulator)."""
    return is_ecr_host(environment.registry or "") or environment.registry_auth == "ecr"


def check_lambda_registry(release: Release, environment: Environment) -> None:
    """Lambda runs images from ECR in its own region only; said before anything is created."""
    registry = environment.registry or ""
    where = f"environment {environment.name!r}: {release.name} runs on lambda"
    if is_ecr_host(registry):
        region = ecr_host_region(registry)
        if region != environment.region:
            raise ConfigError(f"{where}, which pulls images from ECR in the function's region only, but "
                              f"`registry` {registry} is in {region} and `region` is {environment.region}: "
                              f"use the registry <account>.dkr.ecr.{environment.region}.amazonaws.com "
                              f"(or ECR replication to it)")
    elif environment.registry_auth != "ecr":
        raise ConfigError(f"{where}, which pulls images from Amazon ECR only, but `registry` is {registry}: "
                          f"set it to <account>.dkr.ecr.{environment.region or '<region>'}.amazonaws.com")


def lambda_pull_statement(environment: Environment) -> Dict[str, Any]:
    # Only this environment's model functions (ml-*) in its region may pull.
    return {
        "Sid": LAMBDA_PULL_STATEMENT,
        "Effect": "Allow",
        "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": LAMBDA_PULL_ACTIONS,
        "Condition": {"StringLike": {"aws:sourceArn": f"arn:aws:lambda:{environment.region}:*:function:ml-*"}},
    }


def plan_repository(plan: Plan, release: Release, environment: Environment, *, lambda_pull: bool) -> None:
    """Scan on push and the lifecycle policy (and Lambda's pull statement) of the model's
    repository; after the push step, which creates the repository if it is missing."""
    if not is_ecr(environment):
        return
    ecr = aws.client(environment, "ecr")
    name = release.repository(environment)
    resource = f"ECR repository {name}"
    repository = _describe(ecr, name)
    scanning = bool(((repository or {}).get("imageScanningConfiguration") or {}).get("scanOnPush"))
    lifecycle = _lifecycle(ecr, name) if repository else None
    todo: List[str] = []
    if not scanning:
        todo.append("scan on push")
    if lifecycle != LIFECYCLE_POLICY:
        todo.append(f"lifecycle: expire untagged images after {UNTAGGED_EXPIRY_DAYS} days")

    def settle() -> None:
        if repository is None:
            # The push creates it when it uploads; an image already in the registry is not pushed.
            try:
                ecr.create_repository(repositoryName=name, imageScanningConfiguration={"scanOnPush": True})
            except ecr.exceptions.RepositoryAlreadyExistsException:
                pass
        if not scanning:
            ecr.put_image_scanning_configuration(repositoryName=name,
                                                 imageScanningConfiguration={"scanOnPush": True})
        if lifecycle != LIFECYCLE_POLICY:
            ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=json.dumps(LIFECYCLE_POLICY))

    if todo:
        plan.add(CREATE if repository is None else UPDATE, resource, ", ".join(todo), settle)
    else:
        plan.add(UNCHANGED, resource, "scan on push, untagged images expire")
    if lambda_pull:
        _plan_lambda_pull(plan, ecr, name, environment, repository is not None)


def _plan_lambda_pull(plan: Plan, ecr: Any, name: str, environment: Environment, exists: bool) -> None:
    resource = f"ECR repository policy of {name}"
    policy = _policy(ecr, name) if exists else None
    wanted = lambda_pull_statement(environment)
    statements = [s for s in (policy or {}).get("Statement", []) if s.get("Sid") != LAMBDA_PULL_STATEMENT]
    current = next((s for s in (policy or {}).get("Statement", []) if s.get("Sid") == LAMBDA_PULL_STATEMENT), None)
    if current == wanted:
        plan.add(UNCHANGED, resource, "lambda.amazonaws.com may pull")
        return

    def allow() -> None:
        # The repository's other statements are kept: only ours is (re)written.
        ecr.set_repository_policy(repositoryName=name, policyText=json.dumps(
            {"Version": "2012-10-17", "Statement": [*statements, wanted]}))

    plan.add(CREATE if current is None else UPDATE, resource,
             f"lambda.amazonaws.com may pull ({', '.join(LAMBDA_PULL_ACTIONS)}) for functions ml-*", allow)


def _describe(ecr: Any, name: str) -> Optional[Mapping[str, Any]]:
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    except ecr.exceptions.RepositoryNotFoundException:
        return None


def _lifecycle(ecr: Any, name: str) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"])
    except ecr.exceptions.LifecyclePolicyNotFoundException:
        return None


def _policy(ecr: Any, name: str) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(ecr.get_repository_policy(repositoryName=name)["policyText"])
    except ecr.exceptions.RepositoryPolicyNotFoundException:
        return None
