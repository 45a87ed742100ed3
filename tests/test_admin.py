"""Admin API: auth on every route, every bad body refused before the controller, status codes.

The controller is a fake that records its calls: a refused request must leave that list empty.
At the end, schemathesis checks the running API against its OpenAPI document.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from canaryproxy.admin.api import MAX_BODY_BYTES, Conflict, build_admin_app
from canaryproxy.admin.openapi import openapi_document
from canaryproxy.outcomes.metrics import Metrics
from canaryproxy.state.store import StateError

TOKEN = "s3cret-admin-token"
RIGHT = {"Authorization": f"Bearer {TOKEN}"}
WRONG = {"Authorization": "Bearer not-the-token"}
NONE: dict[str, str] = {}
JSON = {"Content-Type": "application/json"}


@dataclass
class FakeService:
    weight: float
    ejected: bool = False
    reason: str | None = None
    before: float | None = None
    plan: str = "idle"


@dataclass
class FakeController:
    """Implements AdminController over a dict; records every call that would change state."""

    services: dict[str, FakeService] = field(
        default_factory=lambda: {"web": FakeService(5.0), "api": FakeService(0.0)}
    )
    calls: list[tuple[object, ...]] = field(default_factory=list)
    fail_with: Exception | None = None

    def service_names(self) -> list[str]:
        return list(self.services)

    def service_state(self, name: str) -> dict[str, object]:
        s = self.services[name]
        stats = {"requests": 10, "errors": 1, "error_rate": 0.1, "p50_ms": 2.0, "p99_ms": None}
        return {
            "name": name,
            "canary_weight": 0.0 if s.ejected else s.weight,
            "ejected": s.ejected,
            "eject_reason": s.reason,
            "verdict": "ejected" if s.ejected else "insufficient_samples",
            "evidence": {"needed": 100},
            "window": {"stable": stats, "canary": stats if name == "web" else None},
            "backends": [
                {
                    "pool": "stable",
                    "url": "http://127.0.0.1:9001",
                    "address": "127.0.0.1:9001",
                    "weight": 1,
                    "healthy": True,
                    "health": {
                        "healthy": True,
                        "active": None,
                        "outlier": {"ejected": False, "until": None, "ejections": 0},
                    },
                }
            ],
        }

    async def set_weight(self, name: str, weight: float, who: str) -> dict[str, object]:
        self._record("set_weight", name, weight, who)
        if self.services[name].ejected:
            raise Conflict("the canary is ejected; restore it to set a weight")
        self.services[name].weight = weight
        return self.service_state(name)

    async def eject(self, name: str, reason: str | None, who: str) -> dict[str, object]:
        self._record("eject", name, reason, who)
        s = self.services[name]
        if s.ejected:
            raise Conflict("the canary is already ejected")
        s.ejected, s.reason, s.before = True, reason or "manual", s.weight
        return self.service_state(name)

    async def restore(self, name: str, weight: float | None, who: str) -> dict[str, object]:
        self._record("restore", name, weight, who)
        s = self.services[name]
        if not s.ejected:
            raise Conflict("the canary is not ejected")
        s.ejected, s.reason = False, None
        s.weight = weight if weight is not None else (s.before or 0.0)
        return self.service_state(name)

    async def audit(self, limit: int) -> list[dict[str, object]]:
        row = {"at": 1.5, "time": "1970-01-01T00:00:01.500Z", "who": "127.0.0.1"}
        more = {"service": "web", "action": "set_weight", "old": "5", "new": "10"}
        return [{**row, **more, "evidence": None}][:limit]

    def rollout_state(self, name: str) -> dict[str, object]:
        return {
            "service": name,
            "state": self.services[name].plan,
            "steps": [5, 50],
            "step": -1 if self.services[name].plan == "idle" else 0,
            "waiting_for": [],
        }

    async def rollout(
        self, name: str, action: str, steps: tuple[float, ...] | None, reason: str | None, who: str
    ) -> dict[str, object]:
        self._record("rollout", name, action, steps, reason, who)
        s = self.services[name]
        if action == "start" and s.plan != "idle":
            raise Conflict("a rollout is already progressing; abort it first")
        s.plan = {"start": "progressing", "pause": "paused", "resume": "progressing"}.get(
            action, "completed" if action == "promote" else "aborted"
        )
        return self.rollout_state(name)

    def _record(self, *call: object) -> None:
        self.calls.append(call)
        if self.fail_with is not None:
            raise self.fail_with


def new_metrics() -> Metrics:
    metrics = Metrics(CollectorRegistry(), [0.1])
    metrics.service("web", [("stable", "http://127.0.0.1:9001")])
    return metrics


@pytest.fixture
def controller() -> FakeController:
    return FakeController()


async def _client(app: web.Application) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def client(
    controller: FakeController,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async for c in _client(build_admin_app(controller, new_metrics(), TOKEN)):
        yield c


@pytest.fixture
async def tokenless(
    controller: FakeController,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async for c in _client(build_admin_app(controller, new_metrics(), None)):
        yield c


Client = TestClient[web.Request, web.Application]

# --- every route × (no token, wrong token, right token) ----------------------------------------

ROUTES = [
    ("GET", "/healthz", None, 200, False),
    ("GET", "/metrics", None, 200, False),
    ("GET", "/admin/services", None, 200, True),
    ("GET", "/admin/services/web", None, 200, True),
    ("PUT", "/admin/services/web/weight", b'{"canary": 25}', 200, True),
    ("POST", "/admin/services/web/eject", b'{"reason": "by hand"}', 200, True),
    ("POST", "/admin/services/web/restore", b"", 409, True),  # not ejected: the fake says 409
    ("GET", "/admin/openapi.json", None, 200, True),
]
AUTH = [("no-token", NONE), ("wrong-token", WRONG), ("right-token", RIGHT)]


@pytest.mark.parametrize(
    ("method", "path", "body", "ok_status", "guarded"),
    ROUTES,
    ids=[f"{r[0]} {r[1]}" for r in ROUTES],
)
@pytest.mark.parametrize(("auth", "headers"), AUTH, ids=[a[0] for a in AUTH])
async def test_every_route_with_every_kind_of_token(
    client: Client,
    controller: FakeController,
    method: str,
    path: str,
    body: bytes | None,
    ok_status: int,
    guarded: bool,
    auth: str,
    headers: dict[str, str],
) -> None:
    resp = await client.request(method, path, data=body, headers={**headers, **JSON})
    if guarded and auth != "right-token":
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
        assert ("invalid_token" in resp.headers["WWW-Authenticate"]) == (auth == "wrong-token")
        assert "error" in await resp.json()
        assert controller.calls == []
    else:
        assert resp.status == ok_status


@pytest.mark.parametrize(
    ("method", "path", "body", "ok_status", "guarded"),
    ROUTES,
    ids=[f"{r[0]} {r[1]}" for r in ROUTES],
)
async def test_without_a_configured_token_admin_routes_say_403(
    tokenless: Client,
    controller: FakeController,
    method: str,
    path: str,
    body: bytes | None,
    ok_status: int,
    guarded: bool,
) -> None:
    resp = await tokenless.request(method, path, data=body, headers={**RIGHT, **JSON})
    if guarded:
        assert resp.status == 403
        assert "no admin.token is configured" in (await resp.json())["error"]
        assert controller.calls == []
    else:
        assert resp.status == ok_status


@pytest.mark.parametrize(
    "header",
    [f"bearer {TOKEN}", f"BEARER   {TOKEN}  ", f"Bearer {TOKEN}"],
    ids=["lower-scheme", "upper-scheme-extra-spaces", "canonical"],
)
async def test_the_bearer_scheme_is_case_insensitive(client: Client, header: str) -> None:
    resp = await client.get("/admin/services", headers={"Authorization": header})
    assert resp.status == 200


@pytest.mark.parametrize(
    "header",
    [f"Basic {TOKEN}", "Bearer", "Bearer ", TOKEN, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"],
    ids=["basic", "no-credentials", "empty-credentials", "no-scheme", "longer", "prefix"],
)
async def test_anything_but_the_exact_token_is_401(client: Client, header: str) -> None:
    resp = await client.get("/admin/services", headers={"Authorization": header})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer ")


async def test_unknown_admin_paths_are_401_before_404(client: Client) -> None:
    resp = await client.get("/admin/nothing-here")
    assert resp.status == 401
    resp = await client.get("/admin/nothing-here", headers=RIGHT)
    assert resp.status == 404
    assert "error" in await resp.json()


# --- reads ------------------------------------------------------------------------------------


async def test_healthz_says_ok(client: Client) -> None:
    resp = await client.get("/healthz")
    assert await resp.json() == {"status": "ok"}


async def test_list_services_has_the_state_of_each(
    client: Client, controller: FakeController
) -> None:
    resp = await client.get("/admin/services", headers=RIGHT)
    body = await resp.json()
    assert set(body["services"]) == {"web", "api"}
    assert body["services"]["web"] == controller.service_state("web")


async def test_one_service_state(client: Client, controller: FakeController) -> None:
    resp = await client.get("/admin/services/api", headers=RIGHT)
    assert resp.status == 200
    assert await resp.json() == controller.service_state("api")


async def test_metrics_are_prometheus_text_and_openmetrics_on_request(client: Client) -> None:
    resp = await client.get("/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(await resp.text())}
    assert "canaryproxy_requests_in_flight" in names
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).endswith("# EOF\n")


async def test_openapi_document_is_served_and_names_every_route(client: Client) -> None:
    resp = await client.get("/admin/openapi.json", headers=RIGHT)
    doc = await resp.json()
    assert doc == openapi_document()
    served = {
        (r.method.lower(), r.resource.canonical)
        for r in client.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {(m, path) for path, ops in doc["paths"].items() for m in ops}
    assert served == documented


# --- changes ----------------------------------------------------------------------------------

GOOD_CHANGES = [
    ("weight-int", "PUT", "weight", b'{"canary": 25}', ("set_weight", "web", 25.0)),
    ("weight-decimal", "PUT", "weight", b'{"canary": 0.5}', ("set_weight", "web", 0.5)),
    ("weight-zero-drains", "PUT", "weight", b'{"canary": 0}', ("set_weight", "web", 0.0)),
    ("weight-100", "PUT", "weight", b'{"canary": 100}', ("set_weight", "web", 100.0)),
    ("eject-no-body", "POST", "eject", b"", ("eject", "web", None)),
    ("eject-empty-object", "POST", "eject", b"{}", ("eject", "web", None)),
    ("eject-null-reason", "POST", "eject", b'{"reason": null}', ("eject", "web", None)),
    ("eject-reason", "POST", "eject", b'{"reason": "v1.1 \\u00e9"}', ("eject", "web", "v1.1 é")),
]


@pytest.mark.parametrize(
    ("method", "action", "body", "call"),
    [g[1:] for g in GOOD_CHANGES],
    ids=[g[0] for g in GOOD_CHANGES],
)
async def test_a_good_change_reaches_the_controller_once_with_the_client_address(
    client: Client,
    controller: FakeController,
    method: str,
    action: str,
    body: bytes,
    call: tuple[object, ...],
) -> None:
    resp = await client.request(
        method, f"/admin/services/web/{action}", data=body, headers={**RIGHT, **JSON}
    )
    assert resp.status == 200
    assert controller.calls == [(*call, "127.0.0.1")]
    assert await resp.json() == controller.service_state("web")


@pytest.mark.parametrize(
    ("body", "resumed"),
    [(b"", 5.0), (b'{"canary": 12.5}', 12.5)],
    ids=["weight-before-ejection", "given-weight"],
)
async def test_restore_after_eject(
    client: Client, controller: FakeController, body: bytes, resumed: float
) -> None:
    await client.post("/admin/services/web/eject", headers=RIGHT)
    resp = await client.post("/admin/services/web/restore", data=body, headers={**RIGHT, **JSON})
    assert resp.status == 200
    assert (await resp.json())["canary_weight"] == resumed
    assert controller.calls[-1] == ("restore", "web", None if not body else 12.5, "127.0.0.1")


async def test_weight_while_ejected_is_409(client: Client, controller: FakeController) -> None:
    await client.post("/admin/services/web/eject", headers=RIGHT)
    resp = await client.put("/admin/services/web/weight", json={"canary": 10}, headers=RIGHT)
    assert resp.status == 409
    assert (await resp.json()) == {"error": "the canary is ejected; restore it to set a weight"}


async def test_json_with_a_utf8_charset_is_accepted(client: Client) -> None:
    headers = {**RIGHT, "Content-Type": "application/json; charset=utf-8"}
    resp = await client.put("/admin/services/web/weight", data=b'{"canary": 7}', headers=headers)
    assert resp.status == 200


@pytest.mark.parametrize(
    ("method", "action"),
    [("GET", ""), ("PUT", "/weight"), ("POST", "/eject"), ("POST", "/restore")],
    ids=["state", "weight", "eject", "restore"],
)
async def test_an_unknown_service_is_404(
    client: Client, controller: FakeController, method: str, action: str
) -> None:
    resp = await client.request(
        method, f"/admin/services/shop{action}", data=b'{"canary": 5}', headers={**RIGHT, **JSON}
    )
    assert resp.status == 404
    assert await resp.json() == {"error": "there is no service named shop"}
    assert controller.calls == []


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (StateError("state file var/x.db: cannot save 'web': disk I/O error"), 500, "disk I/O"),
        (RuntimeError("boom"), 500, "internal error"),
    ],
    ids=["state-error", "bug"],
)
async def test_controller_failures_are_json_500(
    client: Client, controller: FakeController, error: Exception, status: int, message: str
) -> None:
    controller.fail_with = error
    resp = await client.put("/admin/services/web/weight", json={"canary": 10}, headers=RIGHT)
    assert resp.status == status
    assert message in (await resp.json())["error"]


# --- bad bodies: refused, and the controller is never called ----------------------------------

TWO_MB = b'{"canary": 5, "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
JUST_OVER = b'{"canary": 5, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'

BAD_WEIGHT_BODIES = [
    ("minus-1", b'{"canary": -1}', 400, "between 0 and 100, got -1"),
    ("101", b'{"canary": 101}', 400, "between 0 and 100, got 101"),
    ("string-10", b'{"canary": "10"}', 400, "must be a number"),
    ("null", b'{"canary": null}', 400, "must be a number"),
    ("true", b'{"canary": true}', 400, "must be a number"),
    ("list", b'{"canary": [10]}', 400, "must be a number"),
    ("NaN", b'{"canary": NaN}', 400, "NaN is not a JSON number"),
    ("Infinity", b'{"canary": Infinity}', 400, "Infinity is not a JSON number"),
    ("-Infinity", b'{"canary": -Infinity}', 400, "-Infinity is not a JSON number"),
    ("1e400-overflows", b'{"canary": 1e400}', 400, "between 0 and 100"),
    ("missing-key", b"{}", 400, '{"canary": 25}'),
    ("no-body", b"", 400, '{"canary": 25}'),
    (
        "unknown-key",
        b'{"canary": 5, "canary_weight": 5}',
        400,
        "unknown key canary_weight; allowed: canary",
    ),
    ("duplicate-key", b'{"canary": 5, "canary": 90}', 400, "duplicate key"),
    ("array", b"[25]", 400, "must be a JSON object"),
    ("bare-number", b"25", 400, "must be a JSON object"),
    ("not-json", b"canary=25", 400, "not valid JSON"),
    ("truncated", b'{"canary": 2', 400, "not valid JSON"),
    ("not-utf8", b'{"canary": 5, "x": "\xff"}', 400, "not UTF-8"),
    ("deep-nesting", b"[" * 30000 + b"]" * 30000, 400, "nested too deeply"),
    ("2-MB", TWO_MB, 400, "larger than"),
    ("just-over-64-KiB", JUST_OVER, 400, "larger than"),
]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [b[1:] for b in BAD_WEIGHT_BODIES],
    ids=[b[0] for b in BAD_WEIGHT_BODIES],
)
async def test_bad_weight_bodies_are_refused(
    client: Client, controller: FakeController, body: bytes, status: int, message: str
) -> None:
    # BytesIO: aiohttp warns about sending a large bytes body directly; it still sends a length.
    resp = await client.put(
        "/admin/services/web/weight", data=io.BytesIO(body), headers={**RIGHT, **JSON}
    )
    assert resp.status == status
    assert message in (await resp.json())["error"]
    assert controller.calls == []


async def test_a_large_chunked_body_is_400(client: Client, controller: FakeController) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(32):
            yield b" " * 65536  # JSON whitespace; no Content-Length, so aiohttp's limit applies

    resp = await client.put("/admin/services/web/weight", data=chunks(), headers={**RIGHT, **JSON})
    assert resp.status == 400
    assert "larger than" in (await resp.json())["error"]
    assert controller.calls == []


BAD_CONTENT_TYPES = [
    ("text-plain", {"Content-Type": "text/plain"}),
    ("form", {"Content-Type": "application/x-www-form-urlencoded"}),
    ("none", {}),
]


@pytest.mark.parametrize(
    "headers", [c[1] for c in BAD_CONTENT_TYPES], ids=[c[0] for c in BAD_CONTENT_TYPES]
)
async def test_non_json_bodies_are_415(
    client: Client, controller: FakeController, headers: dict[str, str]
) -> None:
    resp = await client.put(
        "/admin/services/web/weight", data=b'{"canary": 5}', headers={**RIGHT, **headers}
    )
    assert resp.status == 415
    assert "application/json" in (await resp.json())["error"]
    assert controller.calls == []


BAD_OPTIONAL_BODIES = [
    ("eject-reason-number", "eject", b'{"reason": 5}', "reason: must be a string"),
    ("eject-reason-long", "eject", b'{"reason": "' + b"r" * 501 + b'"}', "at most 500"),
    ("eject-reason-newline", "eject", b'{"reason": "ok\\nFAKE audit line"}', "control"),
    ("eject-unknown-key", "eject", b'{"why": "x"}', "unknown key why; allowed: reason"),
    ("eject-array", "eject", b'["x"]', "must be a JSON object"),
    ("restore-101", "restore", b'{"canary": 101}', "between 0 and 100"),
    ("restore-null", "restore", b'{"canary": null}', "must be a number"),
    ("restore-NaN", "restore", b'{"canary": NaN}', "NaN"),
    ("restore-unknown-key", "restore", b'{"weight": 5}', "unknown key weight; allowed: canary"),
]


@pytest.mark.parametrize(
    ("action", "body", "message"),
    [b[1:] for b in BAD_OPTIONAL_BODIES],
    ids=[b[0] for b in BAD_OPTIONAL_BODIES],
)
async def test_bad_eject_and_restore_bodies_are_400(
    client: Client, controller: FakeController, action: str, body: bytes, message: str
) -> None:
    resp = await client.post(f"/admin/services/web/{action}", data=body, headers={**RIGHT, **JSON})
    assert resp.status == 400
    assert message in (await resp.json())["error"]
    assert controller.calls == []


# --- aiohttp's own errors are JSON too --------------------------------------------------------

WRONG_METHODS = [
    ("DELETE", "/admin/services/web", "GET"),
    ("POST", "/admin/services/web/weight", "PUT"),
    ("GET", "/admin/services/web/eject", "POST"),
    ("POST", "/healthz", "GET"),
    ("PUT", "/metrics", "GET"),
]


@pytest.mark.parametrize(
    ("method", "path", "allowed"), WRONG_METHODS, ids=[f"{m} {p}" for m, p, _ in WRONG_METHODS]
)
async def test_a_wrong_method_is_json_405_with_allow(
    client: Client, controller: FakeController, method: str, path: str, allowed: str
) -> None:
    resp = await client.request(method, path, headers=RIGHT)
    assert resp.status == 405
    assert allowed in resp.headers["Allow"]
    assert f"method {method} is not allowed" in (await resp.json())["error"]
    assert controller.calls == []


async def test_an_unknown_path_is_json_404(client: Client) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert resp.headers["Content-Type"].startswith("application/json")
    assert await resp.json() == {"error": "no route /nope"}


# --- the API against its OpenAPI document (schemathesis) --------------------------------------

SCHEMA = schemathesis.openapi.from_dict(openapi_document())


@dataclass
class LiveAdmin:
    base_url: str
    controller: FakeController


def _serve_in_thread(app: web.Application) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 from its own loop in a thread; yields the base URL.

    schemathesis sends requests synchronously (requests); aiohttp apps are not WSGI/ASGI, so
    the app runs on a real ephemeral port instead.
    """
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


@pytest.fixture(scope="module")
def live_admin() -> Iterator[LiveAdmin]:
    controller = FakeController()
    for url in _serve_in_thread(build_admin_app(controller, new_metrics(), TOKEN)):
        yield LiveAdmin(url, controller)


SCHEMA_SETTINGS = settings(
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@SCHEMA.parametrize()
@SCHEMA_SETTINGS
def test_the_api_matches_its_openapi_document_with_the_token(
    case: schemathesis.Case[Any], live_admin: LiveAdmin
) -> None:
    # JSON Schema cannot say "increasing": a schema-valid plan such as [50, 10] is a 400.
    lenient = case.path.endswith("/rollout/start")
    excluded: list[Any] = [positive_data_acceptance] if lenient else []
    if case.path == "/admin/audit":
        # Its only input is a query: schemathesis may make a "negative" case by dropping
        # the Authorization header, which this test sends anyway, and then sees a 200.
        # Unknown parameters and bad limits are 400s, checked in test_audit_route_refuses_*.
        excluded.append(negative_data_rejection)
    case.call_and_validate(base_url=live_admin.base_url, headers=RIGHT, excluded_checks=excluded)


@SCHEMA.parametrize()
@SCHEMA_SETTINGS
def test_the_api_matches_its_openapi_document_without_a_token(
    case: schemathesis.Case[Any], live_admin: LiveAdmin
) -> None:
    calls_before = len(live_admin.controller.calls)
    response = case.call_and_validate(base_url=live_admin.base_url)
    if case.path.startswith("/admin/"):
        assert response.status_code == 401
        assert len(live_admin.controller.calls) == calls_before


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("?limit=0", "limit: must be a whole number from 1 to 1000"),
        ("?limit=1001", "limit: must be a whole number from 1 to 1000"),
        ("?limit=ten", "limit: must be a whole number from 1 to 1000"),
        ("?limit=5&x=1", "unknown query parameter 'x'; allowed: limit"),
    ],
)
async def test_audit_route_refuses_bad_queries(client: Client, query: str, error: str) -> None:
    resp = await client.get("/admin/audit" + query, headers=RIGHT)
    assert resp.status == 400
    assert await resp.json() == {"error": error}
