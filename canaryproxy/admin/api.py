"""The admin HTTP API ("Admin API" in the README), an aiohttp application.

Rules this module keeps:

- Every /admin path needs `Authorization: Bearer <admin.token>`, compared in constant time
  (hmac.compare_digest). Missing or wrong: 401 with a `WWW-Authenticate: Bearer` challenge
  (RFC 6750 §3). No token configured: 403, saying so — an open admin API is never the
  default. Authentication runs before routing, so a caller without the token learns nothing
  about which /admin routes exist (404 vs 405). /healthz and /metrics need no token.
  GET /admin/openapi.json is an /admin route like the others, so it needs the token too.
- Bodies are JSON objects with only the keys a route knows, at most 64 KiB (400 above),
  Content-Type application/json (415 otherwise), strict JSON: NaN/Infinity and duplicate keys
  are refused (Python's json accepts both). Weights go through the config's own parser, so the
  file and the API accept exactly the same numbers. A request that fails any of this never
  reaches the controller: nothing changes and nothing is audited.
- Every error is JSON `{"error": "…"}`, including aiohttp's own 404/405 (and its 413, sent as
  400).
- The admin API decides nothing about canaries: the controller (the engine's runtime state)
  changes, persists and audits; this module parses, authenticates and maps outcomes to status
  codes (unknown service 404, Conflict 409).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from canaryproxy.admin.openapi import MAX_REASON_CHARS, openapi_document
from canaryproxy.admin.page import add_page_routes
from canaryproxy.config.load import parse_canary_weight, parse_steps
from canaryproxy.outcomes.metrics import Metrics
from canaryproxy.state.runtime import Conflict
from canaryproxy.state.store import StateError, StoreUnavailable

__all__ = ["MAX_BODY_BYTES", "AdminController", "Conflict", "build_admin_app", "set_token"]

log = logging.getLogger("canaryproxy.admin")

MAX_BODY_BYTES = 64 * 1024
_REALM = 'Bearer realm="canaryproxy-admin"'

State = dict[str, object]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminController(Protocol):
    """What the admin API asks of the engine. Unknown name: KeyError. Not now: Conflict."""

    def service_names(self) -> Sequence[str]: ...

    def service_state(self, name: str) -> State: ...

    async def set_weight(self, name: str, weight: float, who: str) -> State: ...

    async def eject(self, name: str, reason: str | None, who: str) -> State: ...

    async def restore(self, name: str, weight: float | None, who: str) -> State: ...

    def rollout_state(self, name: str) -> State: ...

    async def audit(self, limit: int) -> list[State]: ...

    async def rollout(
        self, name: str, action: str, steps: tuple[float, ...] | None, reason: str | None, who: str
    ) -> State: ...


@dataclass(slots=True)
class _Settings:
    controller: AdminController
    metrics: Metrics
    token: bytes | None  # replaced in place by set_token (SIGHUP); the app itself is frozen


_SETTINGS = web.AppKey("settings", _Settings)


class _ApiError(Exception):
    """An answer with a 4xx/5xx status and a JSON error body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def build_admin_app(
    controller: AdminController, metrics: Metrics, token: str | None
) -> web.Application:
    """The admin application; serve it on `admin.listen` with an AppRunner."""
    app = web.Application(
        middlewares=[_json_errors, _require_token],
        # aiohttp enforces this on chunked bodies too (its 413 becomes our 400); Content-Length
        # is checked earlier.
        client_max_size=MAX_BODY_BYTES,
    )
    app[_SETTINGS] = _Settings(controller, metrics, token.encode() if token else None)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/admin/services", _list_services)
    app.router.add_get("/admin/services/{name}", _get_service)
    app.router.add_put("/admin/services/{name}/weight", _put_weight)
    app.router.add_post("/admin/services/{name}/eject", _post_eject)
    app.router.add_post("/admin/services/{name}/restore", _post_restore)
    app.router.add_get("/admin/services/{name}/rollout", _get_rollout)
    for action in ROLLOUT_BODIES:
        app.router.add_post(f"/admin/services/{{name}}/rollout/{action}", _post_rollout)
    app.router.add_get("/admin/audit", _get_audit)
    app.router.add_get("/admin/openapi.json", _openapi)
    add_page_routes(app.router)  # GET / and /ui/*: the admin web page (no token; page.py)
    return app


def set_token(app: web.Application, token: str | None) -> None:
    """Swap the bearer token of a running admin app (config reload)."""
    app[_SETTINGS].token = token.encode() if token else None


# --- middlewares -------------------------------------------------------------------------------


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _ApiError as exc:
        return _error_response(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # An oversized body is a bad request like any other body we refuse: 400.
        status = 400 if isinstance(exc, web.HTTPRequestEntityTooLarge) else exc.status
        return _error_response(status, _describe(exc, request), _keep_headers(exc))
    except StoreUnavailable as exc:
        log.error("admin change refused: %s", exc)
        return _error_response(503, "state store unavailable")
    except StateError as exc:
        log.error("admin change not persisted: %s", exc)
        return _error_response(500, f"the change was not made: {exc}")
    except Exception:
        log.exception("admin request failed: %s %s", request.method, request.path)
        return _error_response(500, "internal error; see the canaryproxy log")


@web.middleware
async def _require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/admin" or request.path.startswith("/admin/"):
        _authenticate(request.headers.get("Authorization"), request.app[_SETTINGS].token)
    return await handler(request)


def _authenticate(header: str | None, token: bytes | None) -> None:
    if token is None:
        raise _ApiError(403, "the admin API is disabled: no admin.token is configured")
    given = _bearer_credentials(header)
    if given is None:
        raise _ApiError(
            401,
            "missing bearer token: send Authorization: Bearer <admin.token>",
            {"WWW-Authenticate": _REALM},
        )
    if not hmac.compare_digest(given, token):
        raise _ApiError(
            401, "wrong bearer token", {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'}
        )


def _bearer_credentials(header: str | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip().encode("utf-8", "backslashreplace")


def _error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _describe(exc: web.HTTPException, request: web.Request) -> str:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {request.method} is not allowed on {request.path}; allowed: {allowed}"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return f"the body is larger than {MAX_BODY_BYTES} bytes"
    if exc.status == 404:
        return f"no route {request.path}"
    return exc.reason


def _keep_headers(exc: web.HTTPException) -> dict[str, str]:
    # Keep what tells the client how to retry (Allow on 405); drop the text body's framing.
    return {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}


# --- handlers ------------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[_SETTINGS].metrics.exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def _list_services(request: web.Request) -> web.Response:
    controller = request.app[_SETTINGS].controller
    states = {}
    for name in controller.service_names():
        try:
            states[name] = controller.service_state(name)
        except KeyError:  # removed by a reload between the two calls
            continue
    return web.json_response({"services": states})


async def _get_service(request: web.Request) -> web.Response:
    controller = request.app[_SETTINGS].controller
    name = request.match_info["name"]
    try:
        return web.json_response(controller.service_state(name))
    except KeyError:
        raise _unknown_service(name) from None


async def _put_weight(request: web.Request) -> web.Response:
    controller, name = _target(request)
    body = await _read_object(request, ("canary",))
    if body is None or "canary" not in body:
        raise _ApiError(400, 'the body must be a JSON object like {"canary": 25}')
    weight = _weight(body["canary"])
    return await _change(name, controller.set_weight(name, weight, _who(request)))


async def _post_eject(request: web.Request) -> web.Response:
    controller, name = _target(request)
    body = await _read_object(request, ("reason",)) or {}
    reason = _reason(body.get("reason"))
    return await _change(name, controller.eject(name, reason, _who(request)))


async def _post_restore(request: web.Request) -> web.Response:
    controller, name = _target(request)
    body = await _read_object(request, ("canary",)) or {}
    weight = _weight(body["canary"]) if "canary" in body else None
    return await _change(name, controller.restore(name, weight, _who(request)))


MAX_AUDIT_ROWS = 1000


async def _get_audit(request: web.Request) -> web.Response:
    unknown = sorted(set(request.query) - {"limit"})
    if unknown:
        raise _ApiError(400, f"unknown query parameter {unknown[0]!r}; allowed: limit")
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_AUDIT_ROWS:
        raise _ApiError(400, f"limit: must be a whole number from 1 to {MAX_AUDIT_ROWS}")
    rows = await request.app[_SETTINGS].controller.audit(int(raw))
    return web.json_response({"audit": rows})


async def _get_rollout(request: web.Request) -> web.Response:
    controller, name = _target(request)
    try:
        return web.json_response(controller.rollout_state(name))
    except KeyError:
        raise _unknown_service(name) from None


ROLLOUT_BODIES: dict[str, tuple[str, ...]] = {
    "start": ("steps",),
    "pause": (),
    "resume": (),
    "promote": (),
    "abort": ("reason",),
}
"""The keys each rollout action's (optional) body may hold."""


async def _post_rollout(request: web.Request) -> web.Response:
    controller, name = _target(request)
    action = request.path.rsplit("/", 1)[1]
    body = await _read_object(request, ROLLOUT_BODIES[action]) or {}
    steps = _steps(body["steps"]) if "steps" in body else None
    reason = _reason(body.get("reason"))
    return await _change(name, controller.rollout(name, action, steps, reason, _who(request)))


def _target(request: web.Request) -> tuple[AdminController, str]:
    """The controller and the path's service name, which must exist (404 before any body)."""
    controller = request.app[_SETTINGS].controller
    name = request.match_info["name"]
    if name not in controller.service_names():
        raise _unknown_service(name)
    return controller, name


async def _change(name: str, outcome: Awaitable[State]) -> web.Response:
    try:
        return web.json_response(await outcome)
    except KeyError:
        raise _unknown_service(name) from None
    except Conflict as exc:
        raise _ApiError(409, str(exc)) from None


def _unknown_service(name: str) -> _ApiError:
    return _ApiError(404, f"there is no service named {name}")


def _who(request: web.Request) -> str:
    return request.remote or "unknown"


# --- bodies --------------------------------------------------------------------------------


async def _read_object(request: web.Request, allowed: Sequence[str]) -> dict[str, object] | None:
    """The body as a JSON object with only `allowed` keys; None when there is no body."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise _ApiError(400, f"the body is larger than {MAX_BODY_BYTES} bytes")
    if request.body_exists and request.content_type != "application/json":
        raise _ApiError(415, f"the body must be application/json, not {request.content_type}")
    raw = await request.read()
    if not raw:
        return None
    body = _decode_json(raw)
    if not isinstance(body, dict):
        raise _ApiError(400, "the body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise _ApiError(400, f"unknown key {unknown[0]}; allowed: {', '.join(allowed)}")
    return body


def _decode_json(raw: bytes) -> object:
    try:
        text = raw.decode("utf-8")  # RFC 8259 §8.1: JSON exchanged between systems is UTF-8
    except UnicodeDecodeError:
        raise _ApiError(400, "the body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise _ApiError(400, "the body is nested too deeply") from None
    except ValueError as exc:
        raise _ApiError(400, f"the body is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> object:
    # json.loads turns NaN/Infinity/-Infinity into floats; RFC 8259 §6 has no such numbers.
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # RFC 8259 §4: duplicate names make the meaning unpredictable; refuse rather than guess.
        raise ValueError("duplicate key in object")
    return obj


def _weight(value: object) -> float:
    try:
        return parse_canary_weight(value)
    except ValueError as exc:
        raise _ApiError(400, f"canary: {exc}") from None


def _steps(value: object) -> tuple[float, ...]:
    try:
        return parse_steps(value)
    except ValueError as exc:
        raise _ApiError(400, f"steps: {exc}") from None


def _reason(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _ApiError(400, f"reason: must be a string, got {json.dumps(value)}")
    if len(value) > MAX_REASON_CHARS:
        raise _ApiError(400, f"reason: must be at most {MAX_REASON_CHARS} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _ApiError(400, "reason: must not contain control characters")
    return value
