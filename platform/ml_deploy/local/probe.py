"""Plain HTTP GETs to the gateway and the backends on 127.0.0.1 (the deploy tools' only client)."""

from __future__ import annotations

import http.client
from typing import Dict, Optional, Tuple

from ml_contract.package_layout import READY_PATH


def get(port: int, path: str, host: Optional[str] = None, timeout: float = 2.0,
        address: str = "127.0.0.1") -> Tuple[int, Dict[str, str], bytes]:
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"host": host} if host else {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def ready(backend: str) -> bool:
    """Whether the model server at `backend` (host:port) has loaded its model."""
    host, _, port = backend.rpartition(":")
    try:
        return get(int(port), READY_PATH, address=host)[0] == 200
    except (OSError, http.client.HTTPException):
        return False
