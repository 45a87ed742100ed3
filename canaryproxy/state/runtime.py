"""Runtime knobs and their persistence: per-service canary weight, ejection, epoch and
rollout plan.

Each service's ``ServiceState`` is owned by its ``Service``; ``RuntimeState`` is the one
way a change reaches it, through the store.

Rules:
- The most recent change of a service's weight wins. Each record keeps who set the weight
  (``weight_source``: config, admin, rollout) and what the config file said then
  (``config_weight``). A (re)load whose file says another weight than the one last seen
  changed the file since: its weight is applied, persisted and audited (who: ``config``),
  also when that happened while the proxy was down. A file that still says what it said
  leaves an operator's runtime weight in place; the caller logs which one it kept and why.
  A service with no record starts from the file.
- An operator's change is committed to the store before it takes effect and before the
  admin response is sent; if the commit fails nothing changes.
- An automatic ejection takes effect at once (the next request must not reach the canary)
  and is committed synchronously right after (retried in the background if that fails;
  shutdown waits for such retries).
- An ejection bumps the epoch, so every canary cookie stops counting.
- A rollout plan's transitions are changes like any other (persisted, then applied). Two
  follow from other changes, in the same record: any ejection aborts an active plan, and
  an operator's weight (or the file's new weight) pauses a progressing one.
- Changes are serialised by one lock, so the store sees them in the order they happened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any

from canaryproxy.decide.rollout import IDLE, Plan, abort, pause
from canaryproxy.state.store import AuditEntry, ServiceRecord, StateStore
from canaryproxy.vocabulary import EjectRule, WeightSource

log = logging.getLogger("canaryproxy.state")


class Conflict(Exception):
    """The change is not allowed in the current state (e.g. a weight while ejected)."""


@dataclass(slots=True)
class ServiceState:
    """Mutable runtime knobs of one service; read on every request, written only here."""

    name: str
    canary_weight: float
    is_ejected: bool = False
    eject_reason: str | None = None
    eject_rule: EjectRule | None = None
    ejected_at: float | None = None
    weight_before_eject: float | None = None
    epoch: int = 0
    weight_source: WeightSource = "config"
    config_weight: float = 0.0  # what the config file said when this state was last saved
    is_config_weight_saved: bool = True  # False for a record written before it was kept
    rollout: Plan = IDLE

    @property
    def effective_weight(self) -> float:
        return 0.0 if self.is_ejected else self.canary_weight

    def record(self) -> ServiceRecord:
        return ServiceRecord(
            canary_weight=self.canary_weight,
            ejected=self.is_ejected,
            eject_reason=self.eject_reason,
            eject_rule=self.eject_rule,
            ejected_at=self.ejected_at,
            weight_before_eject=self.weight_before_eject,
            epoch=self.epoch,
            weight_source=self.weight_source,
            config_weight=self.config_weight,
            rollout=None if self.rollout == IDLE else self.rollout,
        )

    def apply(self, record: ServiceRecord) -> None:
        self.canary_weight = record.canary_weight
        self.is_ejected = record.ejected
        self.eject_reason = record.eject_reason
        self.eject_rule = record.eject_rule
        self.ejected_at = record.ejected_at
        self.weight_before_eject = record.weight_before_eject
        self.epoch = record.epoch
        # A record written before sources were kept holds an operator's change.
        self.weight_source = record.weight_source or "admin"
        if record.config_weight is not None:
            self.config_weight = record.config_weight
        self.is_config_weight_saved = record.config_weight is not None
        self.rollout = record.rollout or IDLE


class RuntimeState:
    def __init__(self, store: StateStore, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()
        self.who_suffix = ""  # added to every audit row's who (shared state: "@instance")

    def records(self) -> Mapping[str, ServiceRecord]:
        """What the store holds, read once per (re)load."""
        return self.store.load()

    def adopt(
        self,
        name: str,
        weight: float,
        previous: ServiceState | None,
        records: Mapping[str, ServiceRecord],
    ) -> ServiceState:
        """A service's knobs for a (re)loaded config whose ``canary_weight`` is ``weight``.

        A running service keeps its knobs; one seen for the first time takes its persisted
        record, if any (one written before ``config_weight`` was kept counts as written
        under this file). Whether the file's weight then applies is ``follow_config``'s.
        """
        if previous is not None:
            return previous
        state = ServiceState(name=name, canary_weight=weight, config_weight=weight)
        record = records.get(name)
        if record is not None:
            state.apply(record)
        return state

    async def follow_config(self, state: ServiceState, weight: float) -> bool:
        """Apply the file's ``weight`` if the file changed it since the state was saved
        (persisted first, audited as ``config``); True when it did."""
        async with self._lock:
            if state.config_weight == weight:
                if not state.is_config_weight_saved:
                    # A record from before config weights were kept: save what the file
                    # says now, so that an edit made while the proxy is down is seen.
                    new = replace(state.record(), config_weight=weight)
                    await self._commit(
                        state, new, "canaryproxy", "config_baseline", "", _fmt(weight)
                    )
                return False
            new = replace(
                state.record(), canary_weight=weight, weight_source="config", config_weight=weight
            )
            if state.is_ejected:
                new = replace(new, weight_before_eject=weight)  # what a restore resumes at
            new, note = self._paused_by(state, new, "the config file's weight")
            await self._commit(
                state, new, "config", "set_weight", _fmt(state.canary_weight), _fmt(weight) + note
            )
            return True

    # operator changes: persisted, then applied -----------------------------------------------
    async def set_weight(self, state: ServiceState, weight: float, who: str) -> None:
        async with self._lock:
            if state.is_ejected:
                raise Conflict("the canary is ejected; restore it to set a weight")
            new = replace(state.record(), canary_weight=weight, weight_source="admin")
            new, note = self._paused_by(state, new, f"an operator ({who})")
            await self._commit(
                state, new, who, "set_weight", _fmt(state.canary_weight), _fmt(weight) + note
            )

    def _paused_by(
        self, state: ServiceState, new: ServiceRecord, whom: str
    ) -> tuple[ServiceRecord, str]:
        """A weight set by hand pauses a progressing plan: the record, and the audit's note."""
        if state.rollout.state != "progressing":
            return new, ""
        reason = f"{whom} set the weight to {_fmt(new.canary_weight)}"
        return replace(new, rollout=pause(state.rollout, self.clock(), reason)), "; rollout paused"

    async def change_rollout(
        self,
        state: ServiceState,
        plan: Plan,
        weight: float | None,
        who: str,
        action: str,
        evidence: Mapping[str, object] | None = None,
    ) -> None:
        """Commit a rollout transition (and the weight its step holds, set by ``rollout``)."""
        async with self._lock:
            if state.is_ejected and plan.state not in ("aborted", "idle"):
                raise Conflict("the canary is ejected; restore it first")
            new = replace(state.record(), rollout=None if plan == IDLE else plan)
            if weight is not None:
                new = replace(new, canary_weight=weight, weight_source="rollout")
            old = describe_plan(state.rollout)
            to = describe_plan(plan)
            await self._commit(state, new, who, f"rollout:{action}", old, to, evidence)

    async def eject(self, state: ServiceState, rule: EjectRule, reason: str, who: str) -> None:
        async with self._lock:
            if state.is_ejected:
                raise Conflict("the canary is already ejected")
            new = self._ejected_record(state, rule, reason)
            await self._commit(state, new, who, f"eject:{rule}", _fmt(state.canary_weight), reason)

    async def restore(self, state: ServiceState, weight: float | None, who: str) -> None:
        async with self._lock:
            if not state.is_ejected:
                raise Conflict("the canary is not ejected")
            resume = weight if weight is not None else state.weight_before_eject
            new = ServiceRecord(
                canary_weight=resume if resume is not None else state.canary_weight,
                ejected=False,
                eject_reason=None,
                eject_rule=None,
                ejected_at=None,
                weight_before_eject=None,
                epoch=state.epoch,
                weight_source="admin",
                config_weight=state.config_weight,
            )
            old = f"ejected ({state.eject_rule})"
            await self._commit(state, new, who, "restore", old, _fmt(new.canary_weight))

    # automatic ejection: applied at once, persisted right after ------------------------------
    def eject_now(
        self,
        state: ServiceState,
        rule: EjectRule,
        reason: str,
        evidence: Mapping[str, object] | None = None,
    ) -> bool:
        """Eject from the request path; False if it already was.

        Applied at once, then committed right here, synchronously: an ejection is rare, and
        a few milliseconds of a blocked loop buy that a crash a moment later cannot bring
        the canary back. If the commit fails it is retried in the background.
        """
        if state.is_ejected:
            return False
        name = state.name
        old_weight = state.canary_weight
        state.apply(self._ejected_record(state, rule, reason))
        audit = self._audit(
            "canaryproxy", name, f"eject:{rule}", _fmt(old_weight), reason, evidence
        )
        self._save_ejection(name, state.record(), audit)
        return True

    def _save_ejection(self, name: str, record: ServiceRecord, audit: AuditEntry) -> None:
        try:
            self.store.save(name, record, audit)
        except Exception:
            log.exception("could not persist ejection; retrying", extra={"service": name})
            self._in_background(self._persist(name, record, audit))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a commit off the caller's path; ``flush`` waits for it (shutdown)."""
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _persist(self, name: str, record: ServiceRecord, audit: AuditEntry) -> None:
        async with self._lock:
            try:
                await asyncio.to_thread(self.store.save, name, record, audit)
            except Exception:
                log.exception("could not persist ejection", extra={"service": name})

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` audit rows of every service, newest first."""
        return await asyncio.to_thread(self.store.audit_log, None, limit)

    async def flush(self) -> None:
        """Wait for background commits (called on shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        self.store.close()

    # helpers -------------------------------------------------------------------------------
    def _ejected_record(self, state: ServiceState, rule: EjectRule, reason: str) -> ServiceRecord:
        plan = state.rollout
        record = replace(
            state.record(),
            ejected=True,
            eject_reason=reason,
            eject_rule=rule,
            ejected_at=self.clock(),
            weight_before_eject=state.canary_weight,
            epoch=state.epoch + 1,  # ends every canary pin at once
        )
        if plan.is_active:  # an ejection ends the rollout, in the same record
            record = replace(record, rollout=abort(plan, f"ejected ({rule}): {reason}"))
        return record

    async def _commit(
        self,
        state: ServiceState,
        new: ServiceRecord,
        who: str,
        action: str,
        old: str,
        to: str,
        evidence: Mapping[str, object] | None = None,
    ) -> None:
        audit = self._audit(who, state.name, action, old, to, evidence)
        before = state.record()
        await self._save(state, new, audit)
        if state.record() != before:
            # An automatic ejection landed while this was being saved, and its commit may
            # have gone in before ours: write memory's state again so the store ends ejected.
            again = self._audit("canaryproxy", state.name, "recommit", to, "ejected")
            await asyncio.to_thread(self.store.save, state.name, state.record(), again)
            raise Conflict("the canary was ejected while this change was being saved")
        state.apply(new)  # a record from record() carries config_weight: now saved
        log.info(
            "audit",
            extra={"who": who, "service": state.name, "action": action, "old": old, "new": to},
        )

    async def _save(self, state: ServiceState, new: ServiceRecord, audit: AuditEntry) -> None:
        """Write an operator's change (or the file's weight); raises if it was not written."""
        await asyncio.to_thread(self.store.save, state.name, new, audit)

    def _audit(
        self,
        who: str,
        service: str,
        action: str,
        old: str,
        new: str,
        evidence: Mapping[str, object] | None = None,
    ) -> AuditEntry:
        who += self.who_suffix
        return AuditEntry(self.clock(), who, service, action, old, new, evidence)


def _fmt(weight: float) -> str:
    return f"{weight:g}"


def describe_plan(plan: Plan) -> str:
    """A plan in a few words, for the audit log: ``progressing step 2/5 (25 %)``."""
    if plan.step < 0:
        return plan.state
    return f"{plan.state} step {plan.step + 1}/{len(plan.steps)} ({_fmt(plan.weight)} %)"
