"""The admin API from the command line (``canaryproxy status|weight|eject|restore|rollout``).

Rules this module keeps (the README's "Command line"):
- The admin URL comes from ``--admin``, else ``$CANARYPROXY_ADMIN_URL``, else ``--config``'s
  ``admin.listen`` (a wildcard address is reached on loopback), else 127.0.0.1:9901. The
  token comes from ``$CANARYPROXY_ADMIN_TOKEN``, else the config's ``admin.token``.
- Outcomes map to exit codes: 0 done, 1 refused by the API (its JSON reason is printed),
  2 usage (click's own), 3 the admin listener cannot be reached.
- Blocking stdlib HTTP (urllib): one short request per command, nothing to run a loop for.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from canaryproxy.config.load import Config
from canaryproxy.vocabulary import hostport

__all__ = ["EXIT_REFUSED", "EXIT_UNREACHABLE", "AdminClient", "Refused", "Unreachable"]

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
DEFAULT_ADMIN = "http://127.0.0.1:9901"
TIMEOUT = 10.0


class Refused(Exception):
    """The admin API answered with an error: ``status`` and its reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class Unreachable(Exception):
    """No answer from the admin listener (refused, timed out, not HTTP)."""


@dataclass(frozen=True, slots=True)
class AdminClient:
    base: str  # http://host:port, no trailing slash
    token: str | None

    @classmethod
    def locate(cls, admin: str | None, config: Config | None) -> AdminClient:
        """The admin URL and token from the flags, the environment and the config."""
        url = admin or os.environ.get("CANARYPROXY_ADMIN_URL")
        if not url and config is not None:
            listen = config.admin.listen
            host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
                listen.host, listen.host
            )
            url = f"http://{hostport(host, listen.port)}"
        token = os.environ.get("CANARYPROXY_ADMIN_TOKEN") or (
            config.admin.token if config is not None else None
        )
        return cls((url or DEFAULT_ADMIN).rstrip("/"), token)

    def get(self, path: str) -> Any:
        return self._call("GET", path, None)

    def call(self, verb: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call(verb, path, body)

    def _call(self, verb: str, path: str, body: dict[str, Any] | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data, headers, method=verb)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise Refused(exc.code, _reason(exc.read())) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach the admin API at {self.base}: {reason}") from None


def _reason(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip() or "no reason given"
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return json.dumps(data)
