"""Calls from a model to other services: another model by its namespace URL (model-to-model
calls are ordinary REST calls through the gateway or load balancer), or an external API.

Every failure of the upstream becomes an UpstreamError, which the server answers with a clear
status and the upstream's own: 504 when it did not answer in time, 503 when it is overloaded or
unreachable (its 429 or 503, a refused connection), 502 for any other bad answer. A call never
hangs past its timeout. Standard library only: it runs inside model environments.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping, Optional

from ml_runtime.errors import UpstreamError

# Set by every deploy driver: where models answer in this environment, `{model}` standing for a
# model's host label, e.g. http://{model}.ml.localhost:8480 (the local gateway) or
# https://{model}.ml.example.com.
MODEL_URL_ENV = "ML_MODEL_URL"
# How much of an upstream's error body an UpstreamError quotes.
_QUOTED_BYTES = 500


def model_url(model: str, version: int, environ: Optional[Mapping[str, str]] = None) -> str:
    """The base URL of `model`'s version `version` in this environment, ending in `/`."""
    environ = os.environ if environ is None else environ
    template = environ.get(MODEL_URL_ENV)
    if not template:
        raise RuntimeError(f"{MODEL_URL_ENV} is not set: deploy the model (the deploy sets it), or set it to "
                           "the URL models answer at with {model} for the model, e.g. "
                           "http://{model}.ml.localhost:8480")
    return template.rstrip("/").format(model=model.replace("_", "-").lower()) + f"/v{version}/"


def post_json(url: str, body: Any, headers: Optional[Mapping[str, str]] = None, timeout: float = 30.0) -> Any:
    """POST `body` as JSON and return the JSON answer; raises UpstreamError for any failure."""
    target, host = _loopback(url)
    request = urllib.request.Request(target, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", **host, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
    except urllib.error.HTTPError as e:
        quoted = e.read()[:_QUOTED_BYTES].decode(errors="replace")
        status = 503 if e.code in (429, 503) else 502
        raise UpstreamError(f"{url} answered {e.code}: {quoted}", status, e.code) from None
    except (socket.timeout, TimeoutError):
        raise UpstreamError(f"{url} did not answer within {timeout:g} s", 504) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise UpstreamError(f"{url} did not answer within {timeout:g} s", 504) from None
        raise UpstreamError(f"{url} cannot be reached: {e.reason}", 503) from None
    except (ConnectionError, http.client.HTTPException) as e:
        raise UpstreamError(f"{url} broke off its answer: {e}", 502) from None
    try:
        return json.loads(data)
    except ValueError:
        raise UpstreamError(f"{url} answered with something that is not JSON: {data[:_QUOTED_BYTES]!r}", 502) from None



def _loopback(url: str) -> tuple:
    """`url` with a `*.localhost` host (the local gateway's names) sent to 127.0.0.1 under its
    own Host header: such names are loopback by definition (RFC 6761), but the C resolver does
    not know them."""
    parts = urllib.parse.urlsplit(url)
    name = (parts.hostname or "").rstrip(".")
    if name != "localhost" and not name.endswith(".localhost"):
        return url, {}
    netloc = "127.0.0.1" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), {"host": parts.netloc}
