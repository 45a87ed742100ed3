"""The admin web page: ``GET /`` and its two assets, ``GET /ui/app.js`` and ``GET /ui/app.css``.

Rules this module keeps:

- The page is public and holds no data: it needs no token. Everything it shows comes from the
  /admin JSON API, which the page's script calls with `Authorization: Bearer <token>` (the
  token the operator types, kept in sessionStorage, never a cookie).
- One self-contained page, no external assets: its script and style are files of this package
  (``canaryproxy/admin/ui``), read once when the app is built.
- Every answer carries a strict Content-Security-Policy (nothing inline, nothing but this
  origin), `X-Content-Type-Options: nosniff` and `Cache-Control: no-cache`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

__all__ = ["CONTENT_SECURITY_POLICY", "PAGE_ASSETS", "add_page_routes"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

PAGE_ASSETS: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html"),
    "/ui/app.js": ("app.js", "text/javascript"),
    "/ui/app.css": ("app.css", "text/css"),
}
"""Route → (file in canaryproxy/admin/ui, media type)."""

Handler = Callable[[web.Request], Awaitable[web.Response]]

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _serve(body: bytes, content_type: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)

    return handler


def add_page_routes(router: web.UrlDispatcher) -> None:
    """Register the page and its assets (GET, and HEAD with it) on an admin app's router."""
    ui = resources.files("canaryproxy.admin").joinpath("ui")
    for path, (name, content_type) in PAGE_ASSETS.items():
        router.add_get(path, _serve(ui.joinpath(name).read_bytes(), content_type))
