"""The OpenAPI 3.1 document of ``promptmill serve`` (``GET /openapi.json``).

Component schemas come from the pydantic models the server answers with, so the document
cannot drift from the answers.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from schemas.openai import BatchObject, FileObject

_ERRORS = {
    "401": {"$ref": "#/components/responses/Error"},
    "403": {"$ref": "#/components/responses/Error"},
    "404": {"$ref": "#/components/responses/Error"},
}


def _op(summary: str, ok: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": ok, **_ERRORS}, **extra}


def _json(ref: str) -> dict[str, Any]:
    return {
        "description": "OK",
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _param(name: str, where: str = "path", kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": {"type": kind}}


def _schemas() -> dict[str, Any]:
    """The answer models and every model they use, side by side (no nested ``$defs``)."""
    found: dict[str, Any] = {}
    for model in (FileObject, BatchObject):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        found |= schema.pop("$defs", {})
        found[model.__name__] = schema
    return found


@cache
def document() -> dict[str, Any]:
    file_id, batch_id = [_param("file_id")], [_param("batch_id")]
    page = [_param("after", "query"), _param("limit", "query", "integer")]
    listing = {"description": "A page: object, data, first_id, last_id, has_more"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "promptmill",
            "version": "1",
            "description": "OpenAI-compatible Files and Batches API, on Kafka workers.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/files": {
                "post": _op(
                    "Upload a batch input file (multipart: file, purpose=batch)",
                    _json("FileObject"),
                    requestBody={
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["file", "purpose"],
                                    "properties": {
                                        "file": {"type": "string", "format": "binary"},
                                        "purpose": {"type": "string", "enum": ["batch"]},
                                    },
                                }
                            }
                        }
                    },
                ),
                "get": _op("List files", listing, parameters=[*page, _param("order", "query")]),
            },
            "/v1/files/{file_id}": {
                "get": _op("Retrieve a file", _json("FileObject"), parameters=file_id),
                "delete": _op("Delete a file", {"description": "Deleted"}, parameters=file_id),
            },
            "/v1/files/{file_id}/content": {
                "get": _op(
                    "Download a file's content",
                    {"description": "The bytes", "content": {"application/octet-stream": {}}},
                    parameters=file_id,
                )
            },
            "/v1/batches": {
                "post": _op(
                    "Create a batch from an uploaded file",
                    _json("BatchObject"),
                    requestBody={
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["input_file_id", "endpoint", "completion_window"],
                                    "properties": {
                                        "input_file_id": {"type": "string"},
                                        "endpoint": {"const": "/v1/chat/completions"},
                                        "completion_window": {"const": "24h"},
                                        "metadata": {"type": "object"},
                                    },
                                }
                            }
                        }
                    },
                ),
                "get": _op("List batches, newest first", listing, parameters=page),
            },
            "/v1/batches/{batch_id}": {
                "get": _op("Retrieve a batch", _json("BatchObject"), parameters=batch_id)
            },
            "/v1/batches/{batch_id}/cancel": {
                "post": _op("Cancel a batch", _json("BatchObject"), parameters=batch_id)
            },
            "/v1/batches/{batch_id}/results": {
                "get": _op(
                    "Stream each result as it completes (NDJSON; resume with after=cursor)",
                    {"description": "NDJSON lines", "content": {"application/x-ndjson": {}}},
                    parameters=[*batch_id, _param("after", "query"), _param("follow", "query")],
                )
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "security": [],
                    "responses": {"200": {"description": "ok"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "security": [],
                    "responses": {"200": {"description": "ready"}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [],
                    "responses": {"200": {"description": "text"}},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
            "responses": {
                "Error": {
                    "description": "OpenAI's error envelope",
                    "content": {
                        "application/json": {"schema": {"type": "object", "required": ["error"]}}
                    },
                }
            },
        },
    }
