"""The fuzzer's own check, on top of all of schemathesis' built-in ones.

`positive_data_acceptance` expects schema-valid requests to be accepted. Three refusals of
schema-valid input are part of the contract, because no JSON Schema can express them: a model
may reject a value with a 422 (its handler raised ValueError: a pixel out of range, an image it
cannot decode), a request may name a cache entry the server does not hold with a 409 (NotCached:
a random embedding id), and an Open Inference Protocol request may carry tensors whose shape
does not match their data or predict's parameters. The fuzzer's configuration lets positive data get 400,
409 and 422; this check then fails every such answer that is not one of those refusals, so a
schema that promises more than the server accepts is still caught.
"""

from __future__ import annotations

import schemathesis

from ml_runtime.errors import INVALID_REQUEST, MODEL_REJECTED_INPUT, NOT_CACHED, TENSORS_DO_NOT_FIT

# Statuses the configuration adds to positive_data_acceptance's expected ones (fuzz_api.py).
REFUSAL_STATUSES = (400, 409, 422)


def allowed_refusals(path: str) -> set[str]:
    # A cache entry a valid request names may never have been made (a random embedding id).
    refusals = {MODEL_REJECTED_INPUT, NOT_CACHED}
    if path.endswith("/infer"):
        # Tensors that parse as an inference request can still miss predict's schema.
        refusals |= {TENSORS_DO_NOT_FIT, INVALID_REQUEST}
    return refusals


@schemathesis.check
def refusals_the_schema_cannot_express(ctx, response, case) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code not in REFUSAL_STATUSES:
        return None
    try:
        error = response.json().get("error")
    except Exception:
        error = None
    if isinstance(error, dict):  # the OpenAI-compatible routes: OpenAI's shape, our kind as its code
        error = error.get("code")
    allowed = allowed_refusals(case.operation.path)
    if error not in allowed:
        raise AssertionError(
            f"A request valid under the schema got {response.status_code} {error!r}; the schema "
            f"promises more than the server accepts (only {sorted(allowed)} may refuse valid data)"
        )
    return None
