"""The `error` values of the JSON error bodies a client can act on.

The worker writes them and the server writes the same ones, and the API fuzzer's own check
tells a model's legitimate refusal of a schema-valid input from a server bug by them: defined
once, here. Standard library only (it is shipped in every model environment).
"""

MALFORMED_JSON = "malformed JSON"
INVALID_REQUEST = "invalid request"  # valid JSON that does not match the request schema
MODEL_REJECTED_INPUT = "the model rejected the input"  # the handler raised ValueError
NOT_CACHED = "not in the server's cache"  # the handler raised NotCached (a 409)
UPSTREAM_FAILED = "an upstream service failed"  # the handler raised UpstreamError (502/503/504)
# An Open Inference Protocol request, valid as such, whose tensors cannot fill predict's
# parameters (a shape that does not match its data, an input predict does not have).
TENSORS_DO_NOT_FIT = "the tensors do not fit predict's parameters"


class NotCached(LookupError):
    """Raised by a model when a request names state the server no longer holds (an embedding
    evicted from the shared cache, or made by another replica): a 409 whose detail says what to
    send instead. Not a ValueError: the input is fine, the server's state is not there."""


class UpstreamError(RuntimeError):
    """Raised by a model when a service it calls failed (ml_runtime.upstream raises it): the
    server answers `status` (502: a bad answer; 503: overloaded or unreachable; 504: no answer in
    time) with the upstream's own status, if it answered, as `upstream_status`."""

    def __init__(self, message: str, status: int = 502, upstream_status: "int | None" = None) -> None:
        if status not in (502, 503, 504):
            raise ValueError(f"an upstream failure is 502, 503 or 504, not {status}")
        super().__init__(message)
        self.status = status
        self.upstream_status = upstream_status
