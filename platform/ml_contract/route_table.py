"""The local gateway's route table: written by the local deploy driver (`ml_deploy.local`), read
by the gateway (`ml_gateway`), which run from different environments and PEXes.

    {"generation": 7, "domain": "localhost",
     "models": {"iris": {"1": {"backend": "127.0.0.1:41234", "digest": "sha256:..."}}}}

`models` is keyed by host label (`host_label`): a model answers at `<label>.ml.<domain>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping

ROUTES_FILE = "routes.json"  # in the environment's state directory
# The gateway's own answer about the table it serves: generation, pid, requests in flight per
# backend. The deploy tools poll it to know when a table is live and a backend drained.
ADMIN_ROUTES_PATH = "/-/routes"


def host_label(model: str) -> str:
    """The DNS label a model answers under: host names cannot hold `_`."""
    return model.replace("_", "-").lower()


@dataclass(frozen=True)
class RouteBackend:
    address: str  # host:port
    digest: str = ""  # the image digest it serves, sent back as x-ml-digest


@dataclass(frozen=True)
class RouteTable:
    generation: int = 0
    domain: str = "localhost"
    models: Mapping[str, Mapping[int, RouteBackend]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> "RouteTable":
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object with generation, domain and models")
        generation = data.get("generation", 0)
        if not isinstance(generation, int) or isinstance(generation, bool):
            raise ValueError(f"generation must be a whole number, not {generation!r}")
        domain = str(data.get("domain") or "localhost").lower().strip(".")
        models: Dict[str, Dict[int, RouteBackend]] = {}
        for model, versions in (data.get("models") or {}).items():
            if not isinstance(versions, dict):
                raise ValueError(f"models.{model} must map versions to backends")
            routes: Dict[int, RouteBackend] = {}
            for version, entry in versions.items():
                where = f"models.{model}.{version}"
                if not str(version).isdigit() or not isinstance(entry, dict):
                    raise ValueError(f"{where}: expected a version number mapped to {{\"backend\": \"host:port\"}}")
                address = str(entry.get("backend", ""))
                host, _, port = address.rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError(f"{where}.backend: expected host:port, got {address!r}")
                routes[int(version)] = RouteBackend(address, str(entry.get("digest") or ""))
            if routes:
                models[str(model).lower()] = routes
        return cls(generation, domain, models)

    def to_json(self) -> Dict[str, Any]:
        return {
            "generation": self.generation,
            "domain": self.domain,
            "models": {m: {str(v): {"backend": b.address, "digest": b.digest} for v, b in sorted(vs.items())}
                       for m, vs in sorted(self.models.items())},
        }

    @classmethod
    def load(cls, path: Path) -> "RouteTable":
        """The table in `path`; an absent file is an empty table (nothing deployed yet)."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls()
        try:
            return cls.from_json(json.loads(text))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @property
    def suffix(self) -> str:
        return f".ml.{self.domain}"

    def urls(self, port: int) -> List[str]:
        return [f"http://{m}{self.suffix}:{port}/v{v}/" for m in sorted(self.models) for v in sorted(self.models[m])]

    def serves(self, address: str) -> bool:
        return any(b.address == address for vs in self.models.values() for b in vs.values())

    def addresses(self) -> set:
        return {b.address for vs in self.models.values() for b in vs.values()}
