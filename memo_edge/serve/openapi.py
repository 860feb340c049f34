"""The service's OpenAPI 3.1 description, served at ``GET /openapi.json``.

Written out here rather than generated: the endpoints take raw bodies (arrays, image files,
archives) that no request model describes, and a test checks that every route of the app is here
with the same methods, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import memo_edge
from memo_edge.errors import CODES
from memo_edge.options import OptionSpec, UpdateOptions, option_specs
from memo_edge.serve.inputs import ARRAY_TYPES, Limits
from memo_edge.serve.uploads import NPZ_TYPES, TAR_TYPES, ZIP_TYPES, UploadLimits

__all__ = ["openapi_schema"]

_BINARY = {"type": "string", "format": "binary"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ref("Error"), "one line naming the problem") for s in statuses}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _parameter_schema(spec: OptionSpec) -> dict[str, Any]:
    if spec.choices:
        schema: dict[str, Any] = {"enum": list(spec.choices)}
    else:
        kind = {int: "integer", float: "number", bool: "boolean"}.get(spec.kind, "boolean" if spec.is_flag else "string")
        schema = {"type": kind}
    schema |= {k: v for k, v in (("minimum", spec.least), ("maximum", spec.most), ("default", spec.default))
               if v is not None}
    return schema


def _update_parameters() -> list[dict[str, Any]]:
    """POST /update's query: the fields of ``memo_edge.options.UpdateOptions`` a client may set, and
    the old names still accepted."""
    specs = [s for s in option_specs(UpdateOptions) if s.http]
    return ([_query(s.name, _parameter_schema(s), s.help) for s in specs]
            + [_query(s.old, _parameter_schema(s), f"deprecated: {s.name}") | {"deprecated": True}
               for s in specs if s.old is not None])


def openapi_schema(limits: Limits, upload_limits: UploadLimits, *, token: bool) -> dict[str, Any]:
    integer = {"type": "integer"}
    job = {"type": "object", "properties": {
        "id": {"type": "string"},
        "state": {"enum": ["checking", "training", "exporting", "succeeded", "failed"]},
        "classes": {"type": "array", "items": {"type": "string"}},
        "images": {"type": ["integer", "null"]},
        "progress": {"type": "object", "properties": {"epoch": integer, "epochs": integer,
                                                      "loss": {"type": ["number", "null"]}}},
        "parent": {"type": ["integer", "null"], "description": "the version it learns on top of"},
        "version": {"type": ["integer", "null"], "description": "the version it committed"},
        "error": {"type": ["string", "null"]}, "code": {"enum": [*CODES, None]}, "pid": integer,
        "started": {"type": "string", "format": "date-time"},
        "finished": {"type": ["string", "null"], "format": "date-time"}}}
    top = {"type": "object", "properties": {"label": integer, "class": {"type": "string"}, "score": {"type": "number"}}}
    predict_body = {t: {"schema": _BINARY} for t in ARRAY_TYPES} | {"multipart/form-data": {"schema": {
        "type": "object", "properties": {"file": {"type": "array", "items": _BINARY,
                                                  "maxItems": limits.max_images}}}}}
    update_body = {t: {"schema": _BINARY} for t in (*ZIP_TYPES, *TAR_TYPES, *NPZ_TYPES)}
    paths: dict[str, Any] = {
        "/predict": {"post": {
            "summary": f"Classify images: an .npy/.npz uint8 array [N,H,W,C], or image files in field 'file' "
                       f"(at most {limits.max_images} images, {limits.max_body_bytes:,} bytes)",
            "parameters": [_query("top", {"type": "integer", "minimum": 1, "default": 1}, "classes per image")],
            "requestBody": {"required": True, "content": predict_body},
            "responses": {"200": _json(_ref("Predictions"), "top classes per image, and the version that answered"),
                          **_errors(400, 401, 413, 415)}}},
        "/update": {"post": {
            "summary": f"Start the update job on new classes: a zip or tar of class folders, or an npz with x, y "
                       f"and class_names (at most {upload_limits.max_upload_bytes:,} bytes)",
            "parameters": _update_parameters(),
            "requestBody": {"required": True, "content": update_body},
            "responses": {"202": _json(_ref("Job"), "the job, past its checks"),
                          **_errors(400, 401, 409, 413, 415, 503, 507)}}},
        "/jobs/{job_id}": {"get": {
            "summary": "An update job's state and progress",
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json(_ref("Job"), "the job"), **_errors(401, 404)}}},
        "/rollback": {"post": {
            "summary": "Make the previous version current, and serve it",
            "responses": {"200": _json({"type": "object", "properties": {"version": integer}}, "now served"),
                          **_errors(401, 409)}}},
        "/health": {"get": {"summary": "The process is alive (no token needed)", "security": [],
                            "responses": {"200": _json({"type": "object"}, "alive")}}},
        "/ready": {"get": {"summary": "A verified version is loaded",
                           "responses": {"200": _json({"type": "object", "properties": {"version": integer}}, "ready"),
                                         **_errors(401), "503": _json({"type": "object"}, "not ready")}}},
        "/info": {"get": {"summary": "Version, classes, tasks, budget, backend and precision",
                          "responses": {"200": _json({"type": "object"}, "the served version"), **_errors(401)}}},
        "/metrics": {"get": {"summary": "Prometheus text format",
                             "responses": {"200": {"description": "metrics",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           **_errors(401)}}},
        "/openapi.json": {"get": {"summary": "This description",
                                  "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"), **_errors(401)}}},
    }
    schema: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "memo-edge serve", "version": memo_edge.__version__,
                 "description": "Predictions, update jobs and versions of one memo-edge package (docs/serve.md)."},
        "paths": paths,
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error", "code"], "properties": {
                "error": {"type": "string"}, "code": {"enum": list(CODES), "description": "stable: branch on it"}}},
            "Predictions": {"type": "object", "properties": {
                "version": integer,
                "predictions": {"type": "array", "items": {"type": "object", "properties": {
                    "top": {"type": "array", "items": top}}}}}},
            "Job": job}},
    }
    if token:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    return schema
