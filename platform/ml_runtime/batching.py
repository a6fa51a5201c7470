"""Adaptive batching, as a model declares it: an endpoint method called once with the requests
that arrived together, rather than once per request.

    @dataclass
    class Question:
        question: str
        k: int = 3

    class Model:
        # Endpoints called with the requests that arrive together, and their limits.
        batched_endpoints = {"suggest": {"max_batch_size": 32, "max_wait_ms": 5}}

        def suggest(self, requests: list[Question]) -> list[list[Link]]:
            ...  # one result per request, in order

A plain class attribute, so that model code imports nothing from the platform. A client still
sends one request (`{"question": "...", "k": 3}`: the fields of the item type) and gets one
answer. The server gathers the requests that arrive within `max_wait_ms` of the first (up to
`max_batch_size`) and the worker calls the method once with all of them. An item that does not
decode gets its own 422; if the method raises for a batch, each request is tried alone so that
every one gets its own answer or error.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

BATCHED_ENDPOINTS_ATTRIBUTE = "batched_endpoints"
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_WAIT_MS = 5.0


class BatchDeclarationError(ValueError):
    """A handler's `batched_endpoints` cannot be used as it is."""


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS

    def to_json(self) -> dict[str, Any]:
        return {"max_batch_size": self.max_batch_size, "max_wait_ms": self.max_wait_ms}

    @classmethod
    def from_json(cls, data: Optional[Mapping[str, Any]]) -> Optional["BatchPolicy"]:
        return cls(int(data["max_batch_size"]), float(data["max_wait_ms"])) if data else None


def declared_policies(handler: object) -> dict[str, BatchPolicy]:
    """The handler's `batched_endpoints`, checked: endpoint name -> its policy."""
    declared = getattr(handler, BATCHED_ENDPOINTS_ATTRIBUTE, None) or {}
    where = f"{type(handler).__name__}.{BATCHED_ENDPOINTS_ATTRIBUTE}"
    if not isinstance(declared, Mapping):
        raise BatchDeclarationError(f"{where} must map endpoint names to their limits, e.g. "
                                    f"{{\"predict\": {{\"max_batch_size\": 32, \"max_wait_ms\": 5}}}}")
    known = {f.name for f in fields(BatchPolicy)}
    policies = {}
    for name, limits in declared.items():
        if not isinstance(limits, Mapping) or set(limits) - known:
            raise BatchDeclarationError(f"{where}[{name!r}] must be a dict with any of {sorted(known)}")
        policy = BatchPolicy(**{**BatchPolicy().to_json(), **limits})
        if not isinstance(policy.max_batch_size, int) or policy.max_batch_size < 1:
            raise BatchDeclarationError(f"{where}[{name!r}]: max_batch_size must be a whole number >= 1")
        if not isinstance(policy.max_wait_ms, (int, float)) or policy.max_wait_ms < 0:
            raise BatchDeclarationError(f"{where}[{name!r}]: max_wait_ms must be a number >= 0")
        policies[str(name)] = policy
    return policies
