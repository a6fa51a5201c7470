"""Loads a model's handler class and calls its endpoint methods with JSON payloads."""

from __future__ import annotations

import importlib
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable

from ml_runtime.codec import InputError, decode, encode

# Methods of a handler class that are lifecycle hooks, not endpoints.
LIFECYCLE_METHODS = frozenset({"load"})


class HandlerError(Exception):
    """The handler class cannot be loaded or does not fit the model interface."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: Callable[..., Any]
    parameters: dict[str, tuple[Any, bool]]  # name -> (type hint, has a default)
    returns: Any

    def call(self, payload: Any) -> Any:
        """Call the endpoint with a JSON body (an object keyed by parameter name)."""
        if not isinstance(payload, dict):
            raise InputError("", f"expected a JSON object with the fields {sorted(self.parameters)}")
        unknown = sorted(set(payload) - set(self.parameters))
        if unknown:
            raise InputError(unknown[0], "unknown field")
        kwargs = {}
        for name, (hint, has_default) in self.parameters.items():
            if name in payload:
                kwargs[name] = decode(payload[name], hint, name)
            elif not has_default:
                raise InputError(name, "required field is missing")
        return encode(self.method(**kwargs))


class LoadedModel:
    """One handler instance, loaded and ready, with its endpoints by name."""

    def __init__(self, handler_spec: str) -> None:
        self.instance = load_handler_class(handler_spec)()
        load = getattr(self.instance, "load", None)
        if callable(load):
            load()
        self.endpoints = discover_endpoints(self.instance)
        if "predict" not in self.endpoints:
            raise HandlerError(f"{handler_spec} has no `predict` method.")

    def call(self, endpoint: str, payload: Any) -> Any:
        try:
            target = self.endpoints[endpoint]
        except KeyError:
            known = ", ".join(sorted(self.endpoints))
            raise HandlerError(f"no endpoint {endpoint!r}; the model has: {known}") from None
        return target.call(payload)


def load_handler_class(spec: str) -> type:
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise HandlerError(f"handler {spec!r} must look like `module:Class`.")
    module = importlib.import_module(module_name)
    try:
        handler_class = getattr(module, class_name)
    except AttributeError:
        raise HandlerError(f"module {module_name!r} has no class {class_name!r}.") from None
    if not inspect.isclass(handler_class):
        raise HandlerError(f"{spec} is not a class.")
    return handler_class


def discover_endpoints(instance: object) -> dict[str, Endpoint]:
    endpoints = {}
    for name, method in inspect.getmembers(instance, inspect.ismethod):
        if name.startswith("_") or name in LIFECYCLE_METHODS:
            continue
        hints = typing.get_type_hints(method)
        parameters = {}
        for param in inspect.signature(method).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise HandlerError(f"endpoint {name}() cannot take *args or **kwargs.")
            parameters[param.name] = (
                hints.get(param.name, Any),
                param.default is not inspect.Parameter.empty,
            )
        endpoints[name] = Endpoint(name, method, parameters, hints.get("return", Any))
    return endpoints
