"""OpenAPI 3.1 document for one model, from the schemas its worker reported."""

from __future__ import annotations

from typing import Any

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def build_openapi(manifest: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    name, version = manifest["name"], manifest["version"]
    paths: dict[str, Any] = {}
    for endpoint, spec in description["endpoints"].items():
        content: dict[str, Any] = {"application/json": {"schema": spec["request"]}}
        if spec["binary_parameter"]:
            content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        paths[f"/v{version}/{endpoint}"] = {
            "post": {
                "operationId": endpoint,
                "summary": spec["doc"].splitlines()[0] if spec["doc"] else endpoint,
                "requestBody": {"required": True, "content": content},
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": spec["response"]}}},
                    **{code: _ERROR for code in ("400", "413", "415", "422", "500", "503", "504")},
                },
            }
        }
    oip_paths = {
        "/v2/health/live": ("get", "Liveness (Open Inference Protocol)"),
        "/v2/health/ready": ("get", "Readiness (Open Inference Protocol)"),
        f"/v2/models/{name}": ("get", "Model metadata (Open Inference Protocol)"),
        f"/v2/models/{name}/versions/{version}/ready": ("get", "Model readiness"),
        f"/v2/models/{name}/infer": ("post", "Inference (Open Inference Protocol)"),
        f"/v2/models/{name}/versions/{version}/infer": ("post", "Inference (Open Inference Protocol)"),
        "/metrics": ("get", "Prometheus metrics"),
    }
    for path, (method, summary) in oip_paths.items():
        paths[path] = {method: {"summary": summary, "responses": {"200": {"description": "OK"}}}}
    schemas = dict(description["definitions"])
    schemas["Error"] = {
        "type": "object",
        "properties": {"error": {"type": "string"}, "request_id": {"type": "string"},
                       "field": {"type": "string"}, "detail": {"type": "string"}},
        "required": ["error"],
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{name} model API", "version": str(version),
                 "description": manifest.get("description") or f"Generated API of {manifest['address']}."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
