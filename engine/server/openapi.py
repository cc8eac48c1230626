"""/openapi.json: the server's OpenAPI 3.1 document, written from the route table and the declared bodies.

Nothing in it is written by hand: paths, methods, auth and error shapes come from lstmgen.server.app's
ROUTES, request and response bodies from the pydantic models of lstmgen.server.schemas (which carry
this server's limits), so the document states exactly what the server checks.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from .. import __version__
from .http import OPENAI_ERRORS
from .playground import ARTIFACT_FILES
from .schemas import NativeError, OpenAIError, Schemas

REF = "#/components/schemas/{model}"
SSE_EVENT = {"type": "object", "description": "one Server-Sent Event", "required": ["data"],
             "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}
ERROR_STATUSES = {"400": "bad input: one line naming the field", "404": "no such model or path",
                  "413": "body over --max-body", "503": "over --max-requests requests at once; retry"}


def openapi_document(routes, schemas: Schemas, with_key: bool) -> dict:
    components: dict[str, dict] = {}
    paths: dict[str, dict] = {}
    for r in routes:
        if r.documented:
            paths.setdefault(r.template, {})[r.method.lower()] = _operation(r, schemas, components, with_key)
    doc = {"openapi": "3.1.0",
           "info": {"title": "lstmgen serve", "version": __version__,
                    "description": "LSTM text generators over HTTP: native endpoints and OpenAI-compatible ones."},
           "paths": paths, "components": {"schemas": components}}
    if with_key:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def _schema_ref(model: type[BaseModel], components: dict) -> dict:
    schema = model.model_json_schema(ref_template=REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _operation(r, schemas: Schemas, components: dict, with_key: bool) -> dict:
    op: dict = {"summary": r.summary, "operationId": _operation_id(r), "responses": {"200": _ok(r, components)}}
    params = re.findall(r"\{(\w+)\}", r.template)
    if params:
        op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": _path_schema(p, schemas)}
                            for p in params]
    op.setdefault("parameters", []).extend({"name": q, "in": "query", "required": False, "schema": _path_schema(q, schemas)}
                                           for q in r.query)
    if not op["parameters"]:
        del op["parameters"]
    if r.request is not None:
        model = getattr(schemas, r.request)
        # A body whose fields are all optional may be left out (read as {}); one with a required field may not.
        required = any(f.is_required() for f in model.model_fields.values())
        op["requestBody"] = {"required": required, "content": {"application/json": {"schema": _schema_ref(model, components)}}}
    error = _schema_ref(OpenAIError if r.errors == OPENAI_ERRORS else NativeError, components)
    for status, why in ERROR_STATUSES.items():
        op["responses"][status] = {"description": why, "content": {"application/json": {"schema": error}}}
    if r.auth and with_key:
        op["security"] = [{"bearer": []}]
        op["responses"]["401"] = {"description": "missing or wrong API key", "content": {"application/json": {"schema": error}}}
    return op


def _path_schema(name: str, schemas: Schemas) -> dict:
    # A served model's name, or one of an artifact's files: any other is a 404, which says so.
    values = {"model": schemas.served, "file": list(ARTIFACT_FILES)}.get(name)
    return {"type": "string", **({"enum": values} if values else {})}


def _ok(r, components: dict) -> dict:
    if isinstance(r.response, str):  # media types, not a JSON body this server declares
        return {"description": "OK", "content": {media: {} for media in r.response.split()}}
    content = {"application/json": {"schema": _schema_ref(r.response, components)}}
    if r.streams:  # each event: `data` a JSON chunk (or OpenAI's closing [DONE]), `event` its name when it has one
        content["text/event-stream"] = {"schema": SSE_EVENT}
    return {"description": "OK", "content": content}


def _operation_id(r) -> str:
    return r.method.lower() + "_" + (re.sub(r"[^a-z0-9]+", "_", r.template.lower()).strip("_") or "root")
