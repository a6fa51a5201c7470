"""Publishing an image: what `pants publish` (through this package's command line) and
`pants deploy` (ml_deploy.publish) both do, so that there is one push path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from ml_image.registry.auth import Auth
from ml_image.registry.ecr import ensure_ecr_repository, is_ecr_host
from ml_image.registry.reference import Reference
from ml_image.registry.remote import PushResult, push_layout


def publish(layout: Union[str, Path], reference: Union[str, Reference], auth: Auth, *,
            create_ecr_repository: bool = False, boto3_session: Any = None, **push_options: Any) -> PushResult:
    """Push the layout's image to `reference`, creating the ECR repository first where the
    registry is ECR (or fronted by it: `create_ecr_repository`), since ECR, unlike most
    registries, does not create one on first push. `push_options` go to `push_layout`."""
    ref = Reference.parse(reference)
    ecr_host = is_ecr_host(ref.registry)
    if create_ecr_repository or ecr_host:
        ensure_ecr_repository(ref.repository, ref.registry if ecr_host else None, boto3_session=boto3_session)
    return push_layout(layout, ref, auth, **push_options)
