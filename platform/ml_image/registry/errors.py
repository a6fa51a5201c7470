"""Errors of the registry client: each says what went wrong, with the status and the registry's
error codes where there are any, so that callers test those and never parse messages."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence


class RegistryError(Exception):
    """Anything that went wrong talking to a registry or reading a layout; the message says what."""

    def __init__(self, message: str, *, registry: Optional[str] = None, repository: Optional[str] = None,
                 status: Optional[int] = None, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.registry = registry
        self.repository = repository
        self.status = status
        self.errors = list(errors)  # the registry's {"code", "message", "detail"} entries


    @property
    def not_found(self) -> bool:
        """The registry says the manifest, blob or repository does not exist."""
        codes = {e.get("code") for e in self.errors}
        return self.status == 404 or bool(codes & {"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"})


class AuthenticationError(RegistryError):
    """The registry (or its token server) wants credentials, or refused the ones it was given."""


class InsecureTransportError(RegistryError):
    """Plain HTTP to a host that is not a loopback address."""


class DigestMismatchError(RegistryError):
    """Content whose sha256 is not the digest it was asked for or announced with."""


class LayoutError(RegistryError):
    """The OCI image layout on disk is missing something or is inconsistent."""


class InvalidReference(RegistryError, ValueError):
    """An image reference that cannot be parsed or is not complete enough for the operation."""
