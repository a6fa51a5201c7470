"""Loads a model's handler class and calls its endpoint methods with JSON payloads."""

from __future__ import annotations

import asyncio
import collections.abc
import dataclasses
import importlib
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

from ml_runtime.batching import BATCHED_ENDPOINTS_ATTRIBUTE, BatchDeclarationError, BatchPolicy, declared_policies
from ml_runtime.codec import InputError, decode, encode, record_fields

# Methods of a handler class that are lifecycle hooks, not endpoints.
LIFECYCLE_METHODS = frozenset({"load"})
# A handler's request examples, endpoint name -> one request's JSON body: a plain class
# attribute (model code imports nothing from the platform), checked at load, shown in
# /openapi.json.
EXAMPLES_ATTRIBUTE = "endpoint_examples"
# How a streaming endpoint (a generator, or an async generator) annotates what it yields:
# `-> Iterator[Item]` (or Iterable, Generator, AsyncIterator, AsyncIterable, AsyncGenerator).
STREAM_ANNOTATIONS = frozenset({
    collections.abc.Iterator, collections.abc.Iterable, collections.abc.Generator,
    collections.abc.AsyncIterator, collections.abc.AsyncIterable, collections.abc.AsyncGenerator,
})


class HandlerError(Exception):
    """The handler class cannot be loaded or does not fit the model interface."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: Callable[..., Any]
    # The fields of one request: name -> (type hint, has a default). For a batchable endpoint,
    # the fields of its item type.
    parameters: dict[str, tuple[Any, bool]]
    returns: Any  # the result of one request; of a streaming endpoint, one item it yields
    batch: Optional[BatchPolicy] = None
    item_type: Any = None  # batchable endpoints: the type one request decodes to
    example: Any = None  # one request's JSON body, from the handler's endpoint_examples
    streaming: bool = False  # a generator: its items are sent as they are made

    @property
    def binary_response(self) -> bool:
        """Whether the endpoint answers raw bytes (application/octet-stream), not JSON: it is
        annotated `-> bytes`."""
        return self.returns is bytes and self.batch is None

    def _decode(self, payload: Any) -> dict[str, Any]:
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
        return kwargs

    def stream(self, payload: Any) -> Iterator[Any]:
        """A streaming endpoint's items, encoded, as the model makes them. The request is
        decoded (and refused) before the first item; closing the iterator closes the model's
        generator (its `finally` runs)."""
        made = self.method(**self._decode(payload))
        return _encoded(_drive(made) if inspect.isasyncgen(made) else made)

    def call(self, payload: Any) -> Any:
        """Call the endpoint with a JSON body (an object keyed by parameter name); a streaming
        endpoint answers the list of its items."""
        if self.streaming:
            return list(self.stream(payload))
        if self.batch is not None:
            (outcome,) = self.call_batch([payload])
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        result = self.method(**self._decode(payload))
        if self.binary_response:
            if not isinstance(result, (bytes, bytearray)):
                raise TypeError(f"endpoint {self.name}() is annotated `-> bytes` but returned {type(result).__name__}")
            return bytes(result)  # sent as it is: never base64 in JSON
        return encode(result)

    def call_batch(self, payloads: Sequence[Any]) -> list[Any]:
        """A batchable endpoint called once for `payloads`: per request, its encoded result or
        the exception that is its answer. A request that does not decode fails alone; when the
        model raises for the batch, each request is tried alone, so that the one it cannot
        answer gets the error and the others their results."""
        outcomes: list[Any] = [None] * len(payloads)
        items, positions = [], []
        for position, payload in enumerate(payloads):
            try:
                items.append(self._item(payload))
                positions.append(position)
            except InputError as e:
                outcomes[position] = e
        if not items:
            return outcomes
        try:
            results = self._call_items(items)
        except Exception as e:  # noqa: BLE001 - whose request it is, the calls one by one tell
            if len(items) == 1:
                outcomes[positions[0]] = e
                return outcomes
            for position, item in zip(positions, items):
                try:
                    (outcomes[position],) = self._call_items([item])
                except Exception as alone:  # noqa: BLE001 - this request's own answer (422, 500, ...)
                    outcomes[position] = alone
            return outcomes
        for position, result in zip(positions, results):
            outcomes[position] = result
        return outcomes

    def _item(self, payload: Any) -> Any:
        kwargs = self._decode(payload)
        return self.item_type(**kwargs)

    def _call_items(self, items: list[Any]) -> list[Any]:
        results = self.method(items)
        if not isinstance(results, (list, tuple)) or len(results) != len(items):
            got = len(results) if isinstance(results, (list, tuple)) else type(results).__name__
            raise TypeError(f"batchable endpoint {self.name}() returned {got} results for {len(items)} requests: "
                            f"it must return a list with one result per request, in order")
        return [encode(result) for result in results]


class LoadedModel:
    """One handler instance, loaded and ready, with its endpoints by name."""

    def __init__(self, handler_spec: str) -> None:
        self.instance = load_handler_class(handler_spec)()
        load = getattr(self.instance, "load", None)
        if callable(load):
            load()
        self.endpoints = discover_endpoints(self.instance)
        if not self.endpoints:
            # `predict` is the usual one (the Open Inference Protocol's infer maps onto it); a
            # model that generates text may have only `generate` (ml_runtime.generation).
            raise HandlerError(f"{handler_spec} has no endpoints: give it a public method, e.g. `predict`.")

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
    try:
        policies = declared_policies(instance)
    except BatchDeclarationError as e:
        raise HandlerError(str(e)) from None
    endpoints = {}
    for name, method in inspect.getmembers(instance, inspect.ismethod):
        if name.startswith("_") or name in LIFECYCLE_METHODS:
            continue
        hints = typing.get_type_hints(method)
        policy = policies.pop(name, None)
        if policy is not None:
            endpoints[name] = _batchable_endpoint(name, method, hints, policy)
            continue
        parameters = {}
        for param in inspect.signature(method).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise HandlerError(f"endpoint {name}() cannot take *args or **kwargs.")
            parameters[param.name] = (
                hints.get(param.name, Any),
                param.default is not inspect.Parameter.empty,
            )
        returns = hints.get("return", Any)
        streaming = inspect.isgeneratorfunction(method) or inspect.isasyncgenfunction(method)
        if streaming:
            returns = _stream_item(name, returns)
        endpoints[name] = Endpoint(name, method, parameters, returns, streaming=streaming)
    if policies:
        raise HandlerError(f"{type(instance).__name__}.{BATCHED_ENDPOINTS_ATTRIBUTE} names "
                           f"{sorted(policies)}, which are not endpoint methods of it")
    return _with_examples(instance, endpoints)


def _stream_item(name: str, returns: Any) -> Any:
    """What a streaming endpoint yields, from its `-> Iterator[Item]` annotation."""
    if returns is Any:
        return Any
    if typing.get_origin(returns) not in STREAM_ANNOTATIONS or not typing.get_args(returns):
        raise HandlerError(f"streaming endpoint {name}() is a generator: annotate what it yields, "
                           f"e.g. `-> Iterator[Token]` (collections.abc or typing), not {returns!r}")
    return typing.get_args(returns)[0]


def _encoded(items: Any) -> Iterator[Any]:
    try:
        for item in items:
            yield encode(item)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _drive(generator: Any) -> Iterator[Any]:
    """An async generator's items, made on an event loop of this thread's own (a worker runs
    one request at a time); closing this closes the async generator."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(generator.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(generator.aclose())
        loop.close()


def _with_examples(instance: object, endpoints: dict[str, Endpoint]) -> dict[str, Endpoint]:
    """The endpoints with the handler's `endpoint_examples`, each checked to decode as a request
    of its endpoint: an example that drifted from the code fails the load, not a reader."""
    examples = getattr(instance, EXAMPLES_ATTRIBUTE, None) or {}
    where = f"{type(instance).__name__}.{EXAMPLES_ATTRIBUTE}"
    if not isinstance(examples, dict):
        raise HandlerError(f"{where} must map endpoint names to one request's JSON body each, e.g. "
                           f"{{\"predict\": {{\"text\": \"hello\"}}}}")
    unknown = sorted(set(examples) - set(endpoints))
    if unknown:
        raise HandlerError(f"{where} names {unknown}, which are not endpoint methods of it")
    for name, example in examples.items():
        try:
            endpoints[name]._decode(example)
        except InputError as e:
            field = f" at {e.path!r}" if e.path else ""
            raise HandlerError(f"{where}[{name!r}] is not a valid request of {name}(){field}: {e.message}") from None
        endpoints[name] = dataclasses.replace(endpoints[name], example=example)
    return endpoints


def _batchable_endpoint(name: str, method: Callable[..., Any], hints: dict[str, Any],
                        policy: BatchPolicy) -> Endpoint:
    """`def name(self, requests: list[Item]) -> list[Result]`, Item a dataclass or TypedDict."""
    if inspect.isgeneratorfunction(method) or inspect.isasyncgenfunction(method):
        raise HandlerError(f"endpoint {name}() is a generator (it streams): it cannot be batched too; "
                           f"remove it from {BATCHED_ENDPOINTS_ATTRIBUTE}")
    parameters = list(inspect.signature(method).parameters.values())
    usage = (f"batchable endpoint {name}() must take one parameter annotated `list[Item]` (Item a "
             f"dataclass or TypedDict: the fields of one request) and return `list[Result]`")
    if len(parameters) != 1:
        raise HandlerError(usage)
    item_hint = hints.get(parameters[0].name)
    return_hint = hints.get("return")
    if typing.get_origin(item_hint) is not list or typing.get_origin(return_hint) is not list:
        raise HandlerError(usage)
    (item_type,), (result_type,) = typing.get_args(item_hint), typing.get_args(return_hint)
    fields = record_fields(item_type)
    if fields is None:
        raise HandlerError(f"{usage}; {item_type!r} is neither")
    construct = item_type if dataclasses.is_dataclass(item_type) else dict  # a TypedDict is a dict
    return Endpoint(name, method, fields, result_type, batch=policy, item_type=construct)

