"""The OpenAPI 3.1 description of the admin API, served at GET /admin/openapi.json.

It is the machine-readable form of the README's "Admin API" and is what tests/test_admin.py checks
the running API against (with schemathesis). Request-body limits here are the ones api.py
enforces: change them together.
"""

from __future__ import annotations

import copy
from typing import Any

from canaryproxy.vocabulary import EJECT_RULES, POOLS, ROLLOUT_STATES, VERDICTS, WEIGHT_SOURCES

__all__ = ["MAX_REASON_CHARS", "openapi_document"]

# Longest eject reason accepted; it is logged and persisted in the audit line.
MAX_REASON_CHARS = 500

JSON = "application/json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> Schema:
    return _json(_ref("Error"), description)


_UNAUTHORIZED = {
    **_error("Missing or wrong bearer token."),
    "headers": {
        "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer challenge."}
    },
}
_METHOD_NOT_ALLOWED = {
    **_error("Method not allowed on this route."),
    "headers": {"Allow": {"schema": {"type": "string"}, "description": "Allowed methods."}},
}


def _admin_responses(ok: Schema, *extra: str) -> Schema:
    """Responses every /admin route can give, plus the ones named in `extra`."""
    possible = {
        "400": _error("The body is not what this route accepts (or is larger than 64 KiB)."),
        "404": _error("No service by that name."),
        "409": _error("Not possible in the service's current state (e.g. ejected)."),
        "415": _error("The body is not application/json."),
    }
    responses: Schema = {
        "200": ok,
        "401": _UNAUTHORIZED,
        "403": _error("No admin token is configured: the admin API is disabled."),
        "405": _METHOD_NOT_ALLOWED,
        "500": _error("The change could not be made or persisted."),
    }
    responses.update({code: possible[code] for code in extra})
    return responses


_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "Service name, as in the config file.",
    "schema": {"type": "string", "minLength": 1},
    "example": "web",
}
_BEARER: list[Schema] = [{"bearerAuth": []}]


def _write(summary: str, body: str | None, body_required: bool, answer: str = "State") -> Schema:
    """A route that changes state: its body (None: an empty JSON object at most)."""
    schema = _ref(body) if body is not None else {"type": "object", "additionalProperties": False}
    return {
        "summary": summary,
        "security": _BEARER,
        "parameters": [_NAME],
        "requestBody": {"required": body_required, "content": {JSON: {"schema": schema}}},
        "responses": _admin_responses(
            _json(_ref(answer), "What the service holds after the change, persisted."),
            "400",
            "404",
            "409",
            "415",
        ),
    }


def _page(summary: str, media_type: str) -> Schema:
    """A file of the admin web page (page.py): public, no token, not JSON."""
    return {
        "get": {
            "summary": summary,
            "security": [],
            "responses": {
                "200": {
                    "description": "The file, with a strict Content-Security-Policy.",
                    "content": {media_type: {"schema": {"type": "string"}}},
                },
                "405": _METHOD_NOT_ALLOWED,
            },
        }
    }


_PATHS: Schema = {
    "/": _page("The admin web page (no token; it asks for one).", "text/html"),
    "/ui/app.js": _page("The admin web page's script.", "text/javascript"),
    "/ui/app.css": _page("The admin web page's style sheet.", "text/css"),
    "/healthz": {
        "get": {
            "summary": "Liveness of the admin listener (no token).",
            "security": [],
            "responses": {
                "200": _json(_ref("Health"), "Alive."),
                "405": _METHOD_NOT_ALLOWED,
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus exposition (no token).",
            "security": [],
            "responses": {
                "200": {
                    "description": "Text format 0.0.4, or OpenMetrics when Accept asks for it.",
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/openmetrics-text": {"schema": {"type": "string"}},
                    },
                },
                "405": _METHOD_NOT_ALLOWED,
            },
        }
    },
    "/admin/services": {
        "get": {
            "summary": "STATE of every service.",
            "security": _BEARER,
            "responses": _admin_responses(_json(_ref("ServiceList"), "Every service.")),
        }
    },
    "/admin/services/{name}": {
        "get": {
            "summary": "STATE of one service.",
            "security": _BEARER,
            "parameters": [_NAME],
            "responses": _admin_responses(_json(_ref("State"), "The service."), "404"),
        }
    },
    "/admin/services/{name}/weight": {
        "put": _write("Set the canary weight (0 drains). 409 while ejected.", "WeightBody", True)
    },
    "/admin/services/{name}/eject": {
        "post": _write("Eject the canary by hand; ends every canary pin.", "EjectBody", False)
    },
    "/admin/services/{name}/restore": {
        "post": _write(
            "End an ejection; resume at `canary` or at the weight before the ejection.",
            "RestoreBody",
            False,
        )
    },
    "/admin/services/{name}/rollout": {
        "get": {
            "summary": "The rollout plan: state, step, the gate's evidence, what it waits for.",
            "security": _BEARER,
            "parameters": [_NAME],
            "responses": _admin_responses(_json(_ref("Rollout"), "The plan."), "404"),
        }
    },
    "/admin/services/{name}/rollout/start": {
        "post": _write(
            "Start the rollout plan at its first step (`steps`, or the configured plan).",
            "RolloutStartBody",
            False,
            "Rollout",
        )
    },
    "/admin/services/{name}/rollout/pause": {
        "post": _write("Pause the plan: hold the step (and its clock).", None, False, "Rollout")
    },
    "/admin/services/{name}/rollout/resume": {
        "post": _write("Resume a paused plan at its step's weight.", None, False, "Rollout")
    },
    "/admin/services/{name}/rollout/promote": {
        "post": _write("Promote to the next step now (audited).", None, False, "Rollout")
    },
    "/admin/services/{name}/rollout/abort": {
        "post": _write("Abort the plan: ejects the canary.", "EjectBody", False, "Rollout")
    },
    "/admin/audit": {
        "get": {
            "summary": "The newest audit rows: time, who, what, old → new, evidence.",
            "security": _BEARER,
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "description": "How many rows (newest first); default 50.",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                }
            ],
            "responses": _admin_responses(_json(_ref("AuditList"), "Newest first."), "400"),
        }
    },
    "/admin/openapi.json": {
        "get": {
            "summary": "This document.",
            "security": _BEARER,
            "responses": _admin_responses(
                {"description": "OpenAPI 3.1 document.", "content": {JSON: {"schema": {}}}}
            ),
        }
    },
}

_WEIGHT: Schema = {
    "type": "number",
    "minimum": 0,
    "maximum": 100,
    "description": "Canary weight in percent; decimals allowed.",
}
_NULLABLE_NUMBER: Schema = {"type": ["number", "null"]}
_COUNT: Schema = {"type": "integer", "minimum": 0}

_SCHEMAS: Schema = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "WindowStats": {
        "type": "object",
        "required": ["requests", "errors", "error_rate", "p50_ms", "p99_ms"],
        "properties": {
            "requests": _COUNT,
            "errors": _COUNT,
            "error_rate": _NULLABLE_NUMBER,
            "p50_ms": _NULLABLE_NUMBER,
            "p99_ms": _NULLABLE_NUMBER,
        },
    },
    "Backend": {
        "type": "object",
        "required": ["pool", "url", "address", "weight", "healthy", "health"],
        "properties": {
            "pool": {"enum": list(POOLS)},
            "url": {"type": "string"},
            "address": {"type": "string", "description": "host:port ([IPv6]:port)."},
            "weight": {"type": "integer", "minimum": 1},
            "healthy": {"type": "boolean", "description": "In rotation now."},
            "health": _ref("BackendHealth"),
        },
    },
    "BackendHealth": {
        "type": "object",
        "required": ["healthy", "active", "outlier"],
        "properties": {
            "healthy": {"type": "boolean"},
            "active": {
                "description": "Active health checks; null when the service has none.",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["healthy", "streak", "last_error"],
                        "properties": {
                            "healthy": {"type": "boolean"},
                            "streak": {
                                **_COUNT,
                                "description": "Consecutive probes against the current state.",
                            },
                            "last_error": {
                                "type": ["string", "null"],
                                "description": "What the latest failed probe said.",
                            },
                        },
                    },
                ],
            },
            "outlier": {
                "description": "Passive outlier detection (consecutive failures).",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["ejected", "until", "ejections"],
                        "properties": {
                            "ejected": {"type": "boolean"},
                            "until": {
                                "type": ["string", "null"],
                                "format": "date-time",
                                "description": "End of the ejection, ISO 8601 UTC.",
                            },
                            "ejections": {
                                **_COUNT,
                                "description": "Ejections counted towards the cool-off.",
                            },
                        },
                    },
                ],
            },
        },
    },
    "State": {
        "type": "object",
        "description": "A service's runtime state (README, Admin API). More keys may appear.",
        "required": [
            "name",
            "canary_weight",
            "ejected",
            "eject_reason",
            "verdict",
            "evidence",
            "window",
            "backends",
        ],
        "properties": {
            "name": {"type": "string"},
            "canary_weight": _WEIGHT,
            "ejected": {"type": "boolean"},
            "eject_reason": {"type": ["string", "null"]},
            "verdict": {"enum": list(VERDICTS)},
            "evidence": {"type": "object"},
            "window": {
                "type": "object",
                "required": ["stable", "canary"],
                "properties": {
                    "stable": _ref("WindowStats"),
                    "canary": {"oneOf": [_ref("WindowStats"), {"type": "null"}]},
                },
            },
            "backends": {"type": "array", "items": _ref("Backend")},
            # Optional: what the persisted record adds (store.ServiceRecord).
            "configured_weight": _WEIGHT,
            "weight_source": {
                "enum": list(WEIGHT_SOURCES),
                "description": "Whether the weight came from the config file or the state file.",
            },
            "eject_rule": {"enum": [*EJECT_RULES, None]},
            "ejected_at": _NULLABLE_NUMBER,
            "weight_before_eject": {"oneOf": [_WEIGHT, {"type": "null"}]},
            "epoch": _COUNT,
        },
    },
    "ServiceList": {
        "type": "object",
        "required": ["services"],
        "properties": {
            "services": {"type": "object", "additionalProperties": _ref("State")},
        },
    },
    "WeightBody": {
        "type": "object",
        "required": ["canary"],
        "additionalProperties": False,
        "properties": {"canary": _WEIGHT},
    },
    "EjectBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "reason": {
                "type": ["string", "null"],
                "maxLength": MAX_REASON_CHARS,
                # No control characters: the reason goes into log and audit lines verbatim.
                "pattern": "^[^\\u0000-\\u001f\\u007f]*$",
            }
        },
    },
    "RestoreBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"canary": _WEIGHT},
    },
    "RolloutStartBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "steps": {
                "type": "array",
                "minItems": 1,
                "items": {**_WEIGHT, "exclusiveMinimum": 0},
                "description": "Canary weight of each step, strictly increasing (else 400).",
            },
        },
    },
    "AuditList": {
        "type": "object",
        "required": ["audit"],
        "properties": {"audit": {"type": "array", "items": _ref("AuditRow")}},
    },
    "AuditRow": {
        "type": "object",
        "required": ["at", "time", "who", "service", "action", "old", "new", "evidence"],
        "properties": {
            "at": {"type": "number", "description": "Seconds since the epoch."},
            "time": {"type": "string", "description": "The same, ISO 8601 UTC."},
            "who": {"type": "string", "description": "Client address, or canaryproxy/config."},
            "service": {"type": "string"},
            "action": {"type": "string", "description": "set_weight, eject:RULE, rollout:…"},
            "old": {"type": "string"},
            "new": {"type": "string"},
            "evidence": {"type": ["object", "null"]},
        },
    },
    "Rollout": {
        "type": "object",
        "description": "A service's rollout plan (README, Rollouts). More keys may appear.",
        "required": ["service", "state", "steps", "step", "waiting_for"],
        "properties": {
            "service": {"type": "string"},
            "state": {"enum": list(ROLLOUT_STATES)},
            "steps": {"type": "array", "items": _WEIGHT},
            "step": {"type": "integer", "minimum": -1},
            "weight": {"oneOf": [_WEIGHT, {"type": "null"}]},
            "reason": {"type": "string"},
            "step_seconds": _NULLABLE_NUMBER,
            "gate": {"type": ["object", "null"]},
            "waiting_for": {"type": "array", "items": {"type": "string"}},
            "seconds_needed": _NULLABLE_NUMBER,
            "canary_requests_needed": {"type": ["integer", "null"]},
        },
    },
}


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may not share or mutate a module constant)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "canaryproxy admin API",
            "version": "1",
            "description": (
                "Read and change canary weights and ejections. Every /admin route needs "
                '`Authorization: Bearer <admin.token>`; errors are JSON {"error": "…"}.'
            ),
        },
        "paths": copy.deepcopy(_PATHS),
        "components": {
            "schemas": copy.deepcopy(_SCHEMAS),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
