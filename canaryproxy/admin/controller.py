"""What the admin API can read and change: STATE per service, weight, eject, restore, the
rollout plan, and the audit log.

Implements ``admin.AdminController`` over the current ``Services`` table (swapped whole on
reload by ``Proxy.install``); every change is the service's own, persisted first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from canaryproxy.state.runtime import Conflict, RuntimeState
from canaryproxy.state.store import audit_to_dict

if TYPE_CHECKING:
    from canaryproxy.runtime.service import Services

__all__ = ["Conflict", "Controller"]

State = dict[str, object]


class Controller:
    def __init__(self, services: Services, keeper: RuntimeState) -> None:
        self.services = services  # replaced as a whole on reload
        self.keeper = keeper

    def service_names(self) -> Sequence[str]:
        return self.services.names()

    def service_state(self, name: str) -> State:
        return self.services.get(name).state()  # KeyError → 404

    async def set_weight(self, name: str, weight: float, who: str) -> State:
        await self.services.get(name).set_weight(weight, who)
        return self._state_after(name)

    async def eject(self, name: str, reason: str | None, who: str) -> State:
        await self.services.get(name).eject(reason, who)
        return self._state_after(name)

    async def restore(self, name: str, weight: float | None, who: str) -> State:
        await self.services.get(name).restore(weight, who)
        return self._state_after(name)

    def rollout_state(self, name: str) -> State:
        return self.services.get(name).rollout_state()  # KeyError → 404

    async def rollout(
        self, name: str, action: str, steps: tuple[float, ...] | None, reason: str | None, who: str
    ) -> State:
        """``action``: start (with ``steps``, or the configured plan), pause, resume,
        promote or abort (with ``reason``)."""
        service = self.services.get(name)
        if action == "start":
            await service.rollout_start(steps, who)
        elif action == "pause":
            await service.rollout_pause(who)
        elif action == "resume":
            await service.rollout_resume(who)
        elif action == "promote":
            await service.rollout_promote(who)
        elif action == "abort":
            await service.rollout_abort(reason, who)
        else:
            raise ValueError(f"unknown rollout action {action!r}")
        return self.services.get(name).rollout_state()

    async def audit(self, limit: int) -> list[State]:
        """The newest ``limit`` audit rows, newest first."""
        return [audit_to_dict(entry) for entry in await self.keeper.audit(limit)]

    def _state_after(self, name: str) -> State:
        """STATE once a change is saved, from the table in force then: a reload may have
        swapped it while the change was being persisted."""
        return self.services.get(name).state()
