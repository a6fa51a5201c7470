"""The first step of every deploy that runs from a registry: push the image, by digest."""

from __future__ import annotations

from ml_contract.package_layout import IMAGE_LAYOUT
from ml_image.registry import Auth, RegistryClient, RegistryError, read_layout
from ml_image.registry.publish import publish

from ml_deploy import aws
from ml_deploy.ecr_repository import is_ecr
from ml_deploy.config import Environment
from ml_deploy.plan import CREATE, UNCHANGED, Plan
from ml_deploy.release import Release


def registry_auth(environment: Environment) -> Auth:
    assert environment.registry
    ecr = is_ecr(environment)
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


def digest_tag(release: Release) -> str:
    """The tag naming this build for good (`v1-3f2a9c0d1e4b`): `v<N>` moves to every new build of
    version N, this one never does, so no digest a rollback may need is ever left untagged."""
    return f"v{release.version}-{release.short_digest}"


def plan_push(plan: Plan, release: Release, environment: Environment) -> None:
    """Adds the push to `plan`; unchanged when the registry already holds the digest."""
    registry = environment.registry
    assert registry
    repository = release.repository(environment)
    auth = registry_auth(environment)
    client = RegistryClient(registry, repository, auth)
    moving, pinned = f"v{release.version}", digest_tag(release)
    if _has_manifest(client, release.digest):
        plan.add(UNCHANGED, f"image {registry}/{repository}@{release.digest}", "already in the registry")
        return

    def push() -> str:
        ecr = is_ecr(environment)
        result = publish(release.package_dir / IMAGE_LAYOUT, f"{registry}/{repository}:{pinned}", auth,
                         create_ecr_repository=environment.registry_auth == "ecr",
                         boto3_session=aws.session(environment) if ecr else None, quiet=True)
        image = read_layout(release.package_dir / IMAGE_LAYOUT)
        RegistryClient(registry, repository, auth, push=True).put_manifest(moving, image.manifest, image.media_type)
        return (f"pushed {result.uploaded_count} blobs ({result.uploaded_bytes:,} bytes), "
                f"{result.skipped_count} already there")

    plan.add(CREATE, f"image {registry}/{repository}@{release.digest}", f"push as :{pinned} and :{moving}", push)
