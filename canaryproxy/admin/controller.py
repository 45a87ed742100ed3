"""What the admin API can read and change: STATE per service, weight, eject, restore.

Implements ``admin.AdminController`` over the current ``Services`` table (swapped whole on
reload by ``Proxy.install``); every change is the service's own, persisted first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from canaryproxy.state.runtime import Conflict

if TYPE_CHECKING:
    from canaryproxy.runtime.service import Services

__all__ = ["Conflict", "Controller"]

State = dict[str, object]


class Controller:
    def __init__(self, services: Services) -> None:
        self.services = services  # replaced as a whole on reload

    def service_names(self) -> Sequence[str]:
        return self.services.names()

    def service_state(self, name: str) -> State:
        return self.services.get(name).state()  # KeyError → 404

    async def set_weight(self, name: str, weight: float, who: str) -> State:
        service = self.services.get(name)
        await service.set_weight(weight, who)
        return service.state()

    async def eject(self, name: str, reason: str | None, who: str) -> State:
        service = self.services.get(name)
        await service.eject(reason, who)
        return service.state()

    async def restore(self, name: str, weight: float | None, who: str) -> State:
        service = self.services.get(name)
        await service.restore(weight, who)
        return service.state()
