"""Reads a model's secrets from AWS at start, where nothing else can hand them over: on Lambda,
container-image functions cannot use the secrets extension, so the server reads each one with
the function's own role (its credentials are in the environment) before any worker starts.

The deploy sets SECRETS_ENV to a JSON object of names and sources, never values:

    ML_SECRETS={"SUPPORT_REPLY_API_KEY": "secretsmanager:arn:aws:secretsmanager:...",
                "DB_PASSWORD": "ssm:/ml/db-password"}

Requests are signed with Signature Version 4 by the standard library (no AWS SDK is in the
server's environment); AWS_ENDPOINT_URL, as the SDKs read it, points them elsewhere (tests:
moto on 127.0.0.1).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, Mapping, MutableMapping, Optional

SECRETS_ENV = "ML_SECRETS"
# source kind -> (signing name, X-Amz-Target, request body, where the value is in the answer)
_APIS = {
    "secretsmanager": ("secretsmanager", "secretsmanager.GetSecretValue",
                       lambda ref: {"SecretId": ref}, lambda answer: answer["SecretString"]),
    "ssm": ("ssm", "AmazonSSM.GetParameter",
            lambda ref: {"Name": ref, "WithDecryption": True}, lambda answer: answer["Parameter"]["Value"]),
}
TIMEOUT_SECONDS = 10


class SecretUnavailable(RuntimeError):
    """A secret could not be read: the message names it and where it was looked for."""


def load_into(environ: MutableMapping[str, str]) -> list:
    """Read every secret SECRETS_ENV lists and set it in `environ` (the workers inherit it);
    the names read, or SecretUnavailable for the first that cannot be."""
    listed = environ.get(SECRETS_ENV)
    if not listed:
        return []
    sources = json.loads(listed)
    for name, source in sorted(sources.items()):
        environ[name] = read(name, source, environ)
    return sorted(sources)


def read(name: str, source: str, environ: Mapping[str, str]) -> str:
    kind, _, reference = source.partition(":")
    if kind not in _APIS or not reference:
        raise SecretUnavailable(f"secret {name}: unknown source {source!r} (secretsmanager:... or ssm:...)")
    service, target, request_body, value_of = _APIS[kind]
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if not region or not environ.get("AWS_ACCESS_KEY_ID"):
        raise SecretUnavailable(f"secret {name}: no AWS region or credentials in the environment to read {source}")
    url = environ.get("AWS_ENDPOINT_URL") or f"https://{service}.{region}.amazonaws.com"
    body = json.dumps(request_body(reference)).encode()
    headers = {"content-type": "application/x-amz-json-1.1", "x-amz-target": target}
    headers.update(sign("POST", url, body, headers, service, region, environ))
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return value_of(json.loads(response.read()))
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode(errors="replace")
        raise SecretUnavailable(f"secret {name}: {source} answered {e.code}: {detail}") from None
    except (OSError, ValueError, KeyError) as e:
        raise SecretUnavailable(f"secret {name}: {source} could not be read ({type(e).__name__}: {e})") from None


def sign(method: str, url: str, body: bytes, headers: Mapping[str, str], service: str, region: str,
         credentials: Mapping[str, str], now: Optional[datetime.datetime] = None) -> Dict[str, str]:
    """The headers that sign the request (Signature Version 4): x-amz-date, the session token
    if any, and authorization."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    parts = urllib.parse.urlsplit(url)
    signed = {k.lower(): v.strip() for k, v in headers.items()}
    signed.update({"host": parts.netloc, "x-amz-date": amz_date})
    token = credentials.get("AWS_SESSION_TOKEN")
    if token:
        signed["x-amz-security-token"] = token
    names = ";".join(sorted(signed))
    canonical = "\n".join([method, parts.path or "/", parts.query,
                           "".join(f"{k}:{signed[k]}\n" for k in sorted(signed)), names,
                           hashlib.sha256(body).hexdigest()])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + credentials["AWS_SECRET_ACCESS_KEY"]).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {"x-amz-date": amz_date,
           "authorization": f"AWS4-HMAC-SHA256 Credential={credentials['AWS_ACCESS_KEY_ID']}/{scope}, "
                            f"SignedHeaders={names}, Signature={signature}"}
    if token:
        out["x-amz-security-token"] = token
    return out
