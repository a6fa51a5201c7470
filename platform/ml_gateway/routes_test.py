"""Routing rules: which backend a host name and a path reach, and what is not routed says why."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import pytest

from ml_contract.route_table import RouteTable
from ml_gateway.routes import NotRouted, Route, hostname, requested_version, resolve


@pytest.mark.parametrize("path, version", [
    ("/v1/predict", 1),
    ("/v12/classify", 12),
    ("/v3", 3),
    ("/v2/predict", 2),  # version 2's own endpoint
    ("/v2/models/iris/versions/1/infer", 1),
    ("/v2/models/iris/versions/7", 7),
    ("/v2/models/iris/infer", None),  # OIP without a version: the highest live one
    ("/v2/models/iris", None),
    ("/v2/health/ready", None),
    ("/v2", None),
    ("/openapi.json", None),
    ("/metrics", None),
    ("/", None),
    ("/v1predict", None),
])
def test_the_version_a_path_names(path: str, version: Optional[int]) -> None:
    assert requested_version(path) == version


@pytest.mark.parametrize("header, name", [
    ("iris.ml.localhost", "iris.ml.localhost"),
    ("Iris.ML.LocalHost:8480", "iris.ml.localhost"),
    ("iris.ml.localhost.:8480", "iris.ml.localhost"),
    ("[::1]:8480", "[::1]:8480"),
])
def test_hostname(header: str, name: str) -> None:
    assert hostname(header) == name


TABLE = RouteTable.from_json({
    "generation": 3,
    "domain": "localhost",
    "models": {
        "iris": {"1": {"backend": "127.0.0.1:1001", "digest": "sha256:a"},
                 "3": {"backend": "127.0.0.1:1003", "digest": "sha256:c"}},
        "digits": {"1": {"backend": "127.0.0.1:2001"}},
    },
})


@pytest.mark.parametrize("host, path, expected", [
    ("iris.ml.localhost:8480", "/v1/predict", ("iris", 1, "127.0.0.1:1001")),
    ("iris.ml.localhost", "/v3/predict", ("iris", 3, "127.0.0.1:1003")),
    ("IRIS.ml.localhost", "/v2/models/iris/versions/1/infer", ("iris", 1, "127.0.0.1:1001")),
    ("iris.ml.localhost", "/v2/health/ready", ("iris", 3, "127.0.0.1:1003")),
    ("iris.ml.localhost", "/v2/models/iris", ("iris", 3, "127.0.0.1:1003")),
    ("iris.ml.localhost", "/openapi.json", ("iris", 3, "127.0.0.1:1003")),
    ("iris.ml.localhost", "/metrics", ("iris", 3, "127.0.0.1:1003")),
    ("digits.ml.localhost:8480", "/v1/predict", ("digits", 1, "127.0.0.1:2001")),
])
def test_routes_by_host_and_version(host: str, path: str, expected: Tuple[str, int, str]) -> None:
    route = resolve(TABLE, host, path)
    assert isinstance(route, Route)
    assert (route.model, route.version, route.backend.address) == expected


@pytest.mark.parametrize("host, path, reason", [
    ("iris.ml.localhost", "/v2/predict", "iris has no version 2 deployed (live: v1, v3)"),
    ("iris.ml.localhost", "/v2/models/iris/versions/5/infer", "iris has no version 5"),
    ("wine.ml.localhost", "/v1/predict", "no model 'wine' is deployed"),
    ("localhost:8480", "/v1/predict", "names no model: use <model>.ml.localhost"),
    ("a.iris.ml.localhost", "/v1/predict", "names no model"),
    ("iris.ml.example.com", "/v1/predict", "names no model"),
])
def test_what_is_not_routed_says_why(host: str, path: str, reason: str) -> None:
    route = resolve(TABLE, host, path)
    assert isinstance(route, NotRouted)
    assert reason in route.reason


def test_urls_list_every_live_version() -> None:
    assert TABLE.urls(8480) == ["http://digits.ml.localhost:8480/v1/", "http://iris.ml.localhost:8480/v1/",
                                "http://iris.ml.localhost:8480/v3/"]


@pytest.mark.parametrize("data, error", [
    ([], "expected a JSON object"),
    ({"generation": "7"}, "generation must be a whole number"),
    ({"models": {"iris": {"one": {"backend": "127.0.0.1:1"}}}}, "models.iris.one"),
    ({"models": {"iris": {"1": {"backend": "127.0.0.1"}}}}, "expected host:port"),
])
def test_a_bad_route_table_is_refused(data: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RouteTable.from_json(data)
