"""Pushes and pulls OCI images over the OCI distribution API, without a daemon; standard library only.

    python -m ml_image.registry push dist/.../image 127.0.0.1:5000/models/iris:1
    python -m ml_image.registry pull 127.0.0.1:5000/debian:bookworm@sha256:... base-layout

`push_layout` reads an OCI image layout (oci-layout, index.json, blobs/sha256/...), asks the
registry which blobs it already has (HEAD) and uploads only the others (POST an upload session,
then one monolithic PUT streamed from disk), then puts the manifest under the tag and checks the
digest the registry reports. After a one-line code change only the code layer, the config and the
manifest travel. `pull` fetches a manifest (an index or manifest list resolves to one platform,
linux/amd64 by default), checks it against the reference's digest, and streams the config and
layers into an OCI image layout, verifying each blob's sha256, reusing blobs from a
content-addressed cache directory.

Transport: HTTPS, except for loopback registries (127.0.0.0/8, ::1, localhost), which are spoken
to over plain HTTP unless HTTPS is asked for; plain HTTP to any other host is refused before a
connection is made (and so is a plain-HTTP token realm or redirect to such a host). HTTPS
verifies certificates against the system's store (SSL_CERT_FILE and SSL_CERT_DIR are honoured),
or against an `ssl_context` passed in.

Authentication: anonymous, HTTP Basic, or the Bearer token flow (401 with `WWW-Authenticate:
Bearer realm=...,service=...,scope=...`; the token is fetched from the realm, with Basic
credentials if there are any, and cached per scope). Credentials come from arguments, from
ML_REGISTRY_USERNAME / ML_REGISTRY_PASSWORD, or from a provider called only when the registry
asks for them: `ecr_credentials` (Amazon ECR, through boto3) is one. Secrets never appear in a
message, a log line or a repr.

One job per module, in the spirit of go-containerregistry: `reference` (names and transport
rules), `auth` (credentials and what registries taught us), `ecr`, `transport` (HTTP to one
repository), `layout` (OCI layouts on disk), `remote` (push and pull), `media_types`,
`errors`; `python -m ml_image.registry` is the command line (`__main__`). This module
re-exports the public names, so callers import from `ml_image.registry`.
"""

from __future__ import annotations

from ml_image.registry.auth import (  # noqa: F401
    Auth,
    CredentialsProvider,
    PASSWORD_ENV,
    USERNAME_ENV,
    parse_challenges,
)
from ml_image.registry.ecr import (  # noqa: F401
    ecr_credentials,
    ensure_ecr_repository,
    is_ecr_host,
)
from ml_image.registry.errors import (  # noqa: F401
    AuthenticationError,
    DigestMismatchError,
    InsecureTransportError,
    InvalidReference,
    LayoutError,
    RegistryError,
)
from ml_image.registry.layout import (  # noqa: F401
    Descriptor,
    LocalImage,
    blob_path,
    read_layout,
)
from ml_image.media_types import (  # noqa: F401
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    REF_NAME_ANNOTATION,
)
from ml_image.registry.reference import (  # noqa: F401
    Reference,
    is_loopback_host,
)
from ml_image.registry.remote import (  # noqa: F401
    BlobTransfer,
    PullResult,
    PushResult,
    pull,
    push_layout,
)
from ml_image.registry.transport import (  # noqa: F401
    RegistryClient,
    USER_AGENT,
)
