"""The API's OpenAPI 3.1 document, written from the same pydantic models the handlers use.

How this works: ``pydantic.json_schema.models_json_schema`` gives every
model's JSON Schema (2020-12, which OpenAPI 3.1 speaks) with references into
``components/schemas``; the paths below only say which model each call takes
and answers, and which error statuses it can give. Nothing here is written
by hand that a model already says.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from daemon import __version__
from daemon.channels.web.api.models import (
    ApiError,
    Created,
    DecisionsIn,
    DecisionsOut,
    Event,
    RetryOut,
    RunDetail,
    RunList,
)
from daemon.runs.states import State
from daemon.stages.options import RunOptions

_REF = "#/components/schemas/{model}"
_ERRORS = {
    "400": "The request is malformed (a parameter, the JSON).",
    "401": "A token is needed (the daemon listens beyond this machine): Authorization: Bearer.",
    "403": "Refused: a wrong Host name, or a request from another site.",
    "404": "No such run or file.",
    "409": "The run is not in a state that allows this.",
    "413": "The upload is over api.max_upload_mb.",
    "415": "The body's type is wrong (not multipart, not JSON, the song is not audio).",
    "422": "A field is invalid; the message names it.",
    "503": "The run store cannot be used right now.",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out = dict(ok)
    for status in sorted({400, 401, 403, 503, *errors}):
        out[str(status)] = _json(ApiError, _ERRORS[str(status)])
    return out


_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"},
           "description": "the run's id (as listed)"}


@cache
def spec(prefix: str) -> dict[str, Any]:
    """The OpenAPI document of the API mounted at ``prefix``."""
    _, schemas = models_json_schema(
        [(m, "validation") for m in (DecisionsIn, RunOptions)]
        + [(m, "serialization") for m in (ApiError, Created, DecisionsOut, Event, RetryOut, RunDetail, RunList)],
        ref_template=_REF)
    paths: dict[str, Any] = {
        "/health": {"get": {
            "operationId": "health", "summary": "The daemon's health file (heartbeat, counts, stalls).",
            "responses": _responses({"200": {"description": "health", "content": {"application/json": {
                "schema": {"type": "object"}}}}})}},
        "/runs": {
            "get": {
                "operationId": "listRuns", "summary": "Runs, newest first, a page at a time.",
                "parameters": [
                    {"name": "state", "in": "query", "description": "only runs in this state (empty: every state)",
                     "schema": {"type": "string", "enum": ["", *(s.value for s in State)]}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500,
                                                                 "default": 50}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"},
                     "description": "next_cursor of the previous page"},
                ],
                "responses": _responses({"200": _json(RunList, "a page of runs")}),
            },
            "post": {
                "operationId": "createRun",
                "summary": "Submit a song (with photos and options); it enters like a song dropped in the inbox.",
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": {"type": "object", "required": ["song"], "properties": {
                        "song": {"type": "string", "format": "binary", "description": "the audio"},
                        "photos": {"type": "array", "items": {"type": "string", "format": "binary"},
                                   "description": "images for the folder backend, in order"},
                        "options": {"type": "string", "contentMediaType": "application/json",
                                    "contentSchema": _ref(RunOptions), "description": "RunOptions as JSON"},
                    }},
                    "encoding": {"song": {"contentType": "audio/*, application/octet-stream"},
                                 "photos": {"contentType": "image/png, image/jpeg, image/webp"}},
                }}},
                "responses": _responses({"201": _json(Created, "a new run"),
                                         "200": _json(Created, "the same song is already a run (duplicate)")},
                                        413, 415, 422),
            },
        },
        "/runs/{run_id}": {"get": {
            "operationId": "getRun", "summary": "One run: state, history, progress, plan, candidates, decisions.",
            "parameters": [_RUN_ID], "responses": _responses({"200": _json(RunDetail, "the run")}, 404)}},
        "/runs/{run_id}/decisions": {"post": {
            "operationId": "decide", "summary": "Approve, reject or regenerate, like every channel.",
            "parameters": [_RUN_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(DecisionsIn)}}},
            "responses": _responses({"200": _json(DecisionsOut, "the decisions recorded")},
                                    404, 409, 413, 415, 422)}},
        "/runs/{run_id}/retry": {"post": {
            "operationId": "retry", "summary": "Send a failed run back to the state it failed in.",
            "parameters": [_RUN_ID], "responses": _responses({"200": _json(RetryOut, "where it went")}, 404, 409)}},
        "/runs/{run_id}/files/{name}": {"get": {
            "operationId": "getFile",
            "summary": "final.mp4, the exports, the thumbnail, the contact sheet or a candidate (Range supported).",
            "parameters": [_RUN_ID, {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _responses({
                "200": {"description": "the file", "content": {
                    "video/mp4": {"schema": {"type": "string", "format": "binary"}},
                    "video/quicktime": {"schema": {"type": "string", "format": "binary"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "image/webp": {"schema": {"type": "string", "format": "binary"}}}},
                "206": {"description": "the requested range"},
                "416": {"description": "the range lies outside the file"}}, 404)}},
        "/events": {"get": {
            "operationId": "events",
            "summary": "Server-Sent Events: each has an increasing id; Last-Event-ID resumes.",
            "parameters": [{"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                           {"name": "run", "in": "query", "schema": {"type": "string"},
                            "description": "only this run's events"}],
            "responses": _responses({"200": {"description": "an endless stream; each data is an Event",
                                             "content": {"text/event-stream": {"schema": {"type": "string"}}}}})}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tandava", "version": __version__,
                 "description": "Songs in, music videos out. Loopback needs no token; beyond it, "
                                "send Authorization: Bearer <web.token>."},
        "servers": [{"url": prefix}],
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
