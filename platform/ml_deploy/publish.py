"""The first step of every deploy that runs from a registry: push the image, by digest."""

from __future__ import annotations

from ml_contract.package_layout import IMAGE_LAYOUT
from ml_image.registry import Auth, RegistryClient, RegistryError, is_ecr_host
from ml_image.registry.publish import publish

from ml_deploy import aws
from ml_deploy.config import Environment
from ml_deploy.plan import CREATE, UNCHANGED, Plan
from ml_deploy.release import Release


def registry_auth(environment: Environment) -> Auth:
    assert environment.registry
    ecr = environment.registry_auth == "ecr" or is_ecr_host(environment.registry)
    return Auth.for_registry(environment.registry, environment.registry_auth,
                             boto3_session=aws.session(environment) if ecr else None)


def _has_manifest(client: RegistryClient, digest: str) -> bool:
    try:
        client.get_manifest(digest)
    except RegistryError as e:
        if e.not_found:
            return False
        raise
    return True


def plan_push(plan: Plan, release: Release, environment: Environment) -> None:
    """Adds the push to `plan`; unchanged when the registry already holds the digest."""
    registry = environment.registry
    assert registry
    repository = release.repository(environment)
    auth = registry_auth(environment)
    tag_ref = f"{registry}/{repository}:v{release.version}"
    if _has_manifest(RegistryClient(registry, repository, auth), release.digest):
        plan.add(UNCHANGED, f"image {registry}/{repository}@{release.digest}", "already in the registry")
        return

    def push() -> str:
        ecr = environment.registry_auth == "ecr" or is_ecr_host(registry)
        result = publish(release.package_dir / IMAGE_LAYOUT, tag_ref, auth,
                         create_ecr_repository=environment.registry_auth == "ecr",
                         boto3_session=aws.session(environment) if ecr else None, quiet=True)
        return (f"pushed {result.uploaded_count} blobs ({result.uploaded_bytes:,} bytes), "
                f"{result.skipped_count} already there")

    plan.add(CREATE, f"image {registry}/{repository}@{release.digest}", f"push as {tag_ref}", push)
