"""Registry credentials (anonymous, Basic, a provider such as ECR) and what registries taught
us: their challenge and the Bearer tokens they handed out, cached per scope."""

from __future__ import annotations

import base64
import os
import re
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from ml_image.registry.ecr import ecr_credentials, is_ecr_host
from ml_image.registry.errors import AuthenticationError, RegistryError
from ml_image.registry.reference import split_hostport


USERNAME_ENV = "ML_REGISTRY_USERNAME"
PASSWORD_ENV = "ML_REGISTRY_PASSWORD"


CredentialsProvider = Callable[[str], Tuple[str, str]]


class Auth:
    """Credentials for registries, plus what they taught us: their challenge and their tokens.

    One object may serve several registries and repositories; tokens are cached per (realm,
    service, scopes) until shortly before they expire. `provider(registry_host)` is called at
    most once per registry, and only when a registry asks for credentials.
    """

    def __init__(self, username: Optional[str] = None, password: Optional[str] = None,
                 provider: Optional[CredentialsProvider] = None) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both a username and a password, or neither")
        self.username = username
        self._password = password
        self._provider = provider
        self._provided: Dict[str, Optional[Tuple[str, str]]] = {}
        self._challenges: Dict[str, Tuple[str, ...]] = {}  # registry -> ("basic",) or ("bearer", realm, service)
        self._tokens: Dict[Tuple[str, str, Tuple[str, ...]], Tuple[str, float]] = {}
        self.token_requests = 0  # how many times a token server was asked (for tests and logs)

    def __repr__(self) -> str:
        if self._provider is not None:
            return f"Auth(provider={getattr(self._provider, '__name__', type(self._provider).__name__)})"
        if self.username is None:
            return "Auth(anonymous)"
        return f"Auth(username={self.username!r}, password=***)"

    @classmethod
    def from_env(cls, registry: str, env: Optional[Mapping[str, str]] = None,
                 boto3_session: Any = None) -> "Auth":
        """ML_REGISTRY_USERNAME/ML_REGISTRY_PASSWORD if set, else ECR for ECR hosts, else anonymous."""
        env = os.environ if env is None else env
        username, password = env.get(USERNAME_ENV), env.get(PASSWORD_ENV)
        if username and password is not None:
            return cls(username, password)
        if is_ecr_host(registry):
            return cls(provider=lambda host: ecr_credentials(host, boto3_session=boto3_session))
        return cls()

    @classmethod
    def for_registry(cls, registry: str, mode: str = "auto", boto3_session: Any = None) -> "Auth":
        """The credentials every push and pull uses (`pants publish`, `pants deploy`, the CLI):
        `auto` is `from_env`; `ecr` always asks ECR, for a registry fronted by ECR's auth."""
        if mode == "ecr":
            return cls(provider=lambda host: ecr_credentials(host, boto3_session=boto3_session))
        if mode != "auto":
            raise ValueError(f"registry auth mode {mode!r}: use `auto` or `ecr`")
        return cls.from_env(registry, boto3_session=boto3_session)

    def credentials(self, registry: str) -> Optional[Tuple[str, str]]:
        if self.username is not None and self._password is not None:
            return self.username, self._password
        if self._provider is None:
            return None
        if registry not in self._provided:
            try:
                user, password = self._provider(split_hostport(registry)[0])
            except RegistryError:
                raise
            except Exception as e:  # boto3's errors name no secret
                raise AuthenticationError(f"getting credentials for {registry} failed: "
                                          f"{type(e).__name__}: {e}", registry=registry) from e
            self._provided[registry] = (user, password)
        return self._provided[registry]

    def describe(self, registry: str) -> str:
        """Whose credentials these are, for messages (never the secret)."""
        if self.username is not None:
            return f"user {self.username!r}"
        if self._provider is not None:
            return "the credentials from the provider"
        return "anonymous access"

    def basic_header(self, registry: str) -> Optional[str]:
        creds = self.credentials(registry)
        if creds is None:
            return None
        raw = f"{creds[0]}:{creds[1]}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    # What the transport learns from registries, kept here so one Auth serves many clients.
    @property
    def has_credentials(self) -> bool:
        return self.username is not None or self._provider is not None

    def challenge(self, registry: str) -> Optional[Tuple[str, ...]]:
        """("basic",) or ("bearer", realm, service), once the registry has said which it wants."""
        return self._challenges.get(registry)

    def remember_challenge(self, registry: str, challenge: Tuple[str, ...]) -> None:
        self._challenges[registry] = challenge

    def cached_token(self, key: Tuple[str, str, Tuple[str, ...]]) -> Optional[Tuple[str, float]]:
        """(token, monotonic expiry) for (realm, service, scopes), if one was handed out."""
        return self._tokens.get(key)

    def remember_token(self, key: Tuple[str, str, Tuple[str, ...]], token: str, expires: float) -> None:
        self._tokens[key] = (token, expires)


def parse_challenges(values: Iterable[str]) -> List[Tuple[str, Dict[str, str]]]:
    """`Bearer realm="...",service="...",scope="a b"` -> [("bearer", {...})]; several allowed."""
    item = re.compile(r'[\s,]*([^\s,=]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^\s,]*))?')
    challenges: List[Tuple[str, Dict[str, str]]] = []
    for value in values:
        pos, current = 0, None
        while True:
            match = item.match(value, pos)
            if not match or match.end() == pos:
                break
            pos = match.end()
            name, raw = match.group(1), match.group(2)
            if raw is None:  # a word without "=" starts a challenge
                current = (name.lower(), {})
                challenges.append(current)
            elif current is not None:
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                current[1][name.lower()] = raw
    return challenges
