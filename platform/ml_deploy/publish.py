"""The first step of every deploy that runs from a registry: push the image, by digest."""

from __future__ import annotations

from ml_contract.package_layout import IMAGE_LAYOUT
from ml_image.registry import (
    Auth,
    RegistryClient,
    RegistryError,
    ensure_ecr_repository,
    is_ecr_host,
    push_layout,
)

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
    ecr = is_ecr_host(registry) or environment.registry_auth == "ecr"
    if _has_manifest(RegistryClient(registry, repository, auth), release.digest):
        plan.add(UNCHANGED, f"image {registry}/{repository}@{release.digest}", "already in the registry")
        return

    def push() -> str:
        if ecr:
            ensure_ecr_repository(repository, registry if is_ecr_host(registry) else None,
                                  boto3_session=aws.session(environment))
        result = push_layout(release.package_dir / IMAGE_LAYOUT, tag_ref, auth, quiet=True)
        return (f"pushed {result.uploaded_count} blobs ({result.uploaded_bytes:,} bytes), "
                f"{result.skipped_count} already there")

    plan.add(CREATE, f"image {registry}/{repository}@{release.digest}", f"push as {tag_ref}", push)
