"""Amazon ECR: recognising its hosts, its credentials and creating repositories (boto3 is
imported only when these are called)."""

from __future__ import annotations

import base64
import re
from typing import Any, Dict, Optional, Tuple

from ml_image.registry.errors import AuthenticationError, InvalidReference
from ml_image.registry.reference import split_hostport


_ECR_HOST_RE = re.compile(
    r"(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?\Z"
)


def is_ecr_host(registry: str) -> bool:
    try:
        return bool(_ECR_HOST_RE.match(split_hostport(registry)[0]))
    except InvalidReference:
        return False


def ecr_host_region(registry: str) -> Optional[str]:
    """The region of an ECR host (<account>.dkr.ecr.<region>.amazonaws.com), else None."""
    try:
        match = _ECR_HOST_RE.match(split_hostport(registry)[0])
    except InvalidReference:
        return None
    return match.group("region") if match else None


def _ecr_client(registry_host: Optional[str], boto3_session: Any) -> Tuple[Any, Optional[str]]:
    match = _ECR_HOST_RE.match(split_hostport(registry_host)[0]) if registry_host else None
    session = boto3_session
    if session is None:
        try:
            import boto3  # type: ignore[import-not-found]
        except ImportError as e:
            raise AuthenticationError(f"Amazon ECR needs boto3 (pip install boto3): {e}") from e
        session = boto3.session.Session()
    region = match.group("region") if match else None
    client = session.client("ecr", region_name=region) if region else session.client("ecr")
    return client, (match.group("account") if match else None)


def ecr_credentials(registry_host: str, boto3_session: Any = None) -> Tuple[str, str]:
    """("AWS", password) for an ECR registry, from `ecr.get_authorization_token()`.

    The region comes from the host (<account>.dkr.ecr.<region>.amazonaws.com); boto3's usual
    credential chain (environment, profile, instance role) applies. Use as an `Auth` provider:
    `Auth(provider=ecr_credentials)`. The token is valid for 12 hours.
    """
    client, _ = _ecr_client(registry_host, boto3_session)
    data = client.get_authorization_token()["authorizationData"]
    if not data:
        raise AuthenticationError(f"ECR returned no authorization data for {registry_host}",
                                  registry=registry_host)
    user, _, password = base64.b64decode(data[0]["authorizationToken"]).decode().partition(":")
    return user, password


def ensure_ecr_repository(name: str, registry_host: Optional[str] = None, boto3_session: Any = None) -> bool:
    """Create ECR repository `name` unless it exists; True if it was created.

    ECR, unlike most registries, does not create a repository on first push. With
    `registry_host`, its region and account are used; otherwise boto3's defaults.
    """
    client, account = _ecr_client(registry_host, boto3_session)
    kwargs: Dict[str, Any] = {"repositoryName": name}
    if account:
        kwargs["registryId"] = account
    try:
        client.create_repository(**kwargs)
    except client.exceptions.RepositoryAlreadyExistsException:
        return False
    return True
