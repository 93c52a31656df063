"""One run's steps on one reading of the facts (the rules of one tick's step):
``plan(run, facts, now=…, policy=…)`` is :func:`decide` then :func:`evolve`, once
per event, and :class:`Plan` holds the events and the projection after each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from retro.events import Event, JobReenqueued, Requested
from retro.machine.facts import Facts, Policy
from retro.machine.history import evolve
from retro.machine.rules import decide
from retro.machine.states import TERMINAL, Run

MAX_STEPS_PER_RUN = 16
"""Events one plan may hold: one run's steps on one reading of the facts (a whole
heal is about a dozen events; one reading gives at most five)."""


@dataclass(frozen=True)
class Plan:
    """What one run does on one reading of the facts: its ``events`` in order, the
    projection after each (``runs``, one per event, each one higher version), and
    ``again``: the plan stopped short of an event the run may take at once (a retry
    of the job it just judged), so the tick should look again soon.
    """

    run: Run
    """The projection the plan was made on."""
    events: tuple[Event, ...]
    runs: tuple[Run, ...]
    facts: Facts
    """The facts as the plan last used them: those given, less the job (and its
    worker count) once an event moved the run off that job."""
    again: bool = False

    @property
    def final(self) -> Run:
        """The projection after the whole plan (``run`` when it holds no event)."""
        return self.runs[-1] if self.runs else self.run

    def steps(self) -> Iterable[tuple[Run, Event, Run]]:
        """``(before, event, after)`` for each event, in order."""
        befores = (self.run, *self.runs)[: len(self.runs)]
        return zip(befores, self.events, self.runs, strict=True)

    def adopt(self, created_at: datetime | None) -> Plan:
        """The plan with its final ``…Requested`` adopting a job BullMQ already holds
        (created at ``created_at``, aware UTC; the shell found it in step 1): the
        event and the final projection both record it. ``evolve`` of the adopted
        event gives the same projection; it is not run again.

        Raises:
            ValueError: the plan does not end with a ``…Requested``.
        """
        if not self.events or not isinstance(last := self.events[-1], Requested):
            raise ValueError("only a plan that ends with a request can adopt a job")
        return replace(
            self,
            events=(*self.events[:-1], replace(last, adopted_created_at=created_at)),
            runs=(*self.runs[:-1], replace(self.runs[-1], adopted_created_at=created_at)),
        )


def plan(
    run: Run,
    facts: Facts,
    *,
    now: datetime,
    policy: Policy,
    limit: int = MAX_STEPS_PER_RUN,
) -> Plan:
    """Every event ``run`` takes on one reading of ``facts`` at ``now`` (aware UTC).

    Pure: :func:`decide` then :func:`evolve`, once per event, by these rules:

    - at most ``limit`` events (:data:`MAX_STEPS_PER_RUN`);
    - it ends after a ``…Requested`` or ``JobReenqueued`` (the shell enqueues that
      job after the commit, and its outcome is news for a later reading) and at a
      terminal state;
    - it stops *before* a ``…Requested`` of the job id ``run`` held when the plan
      started once it holds an event (``again`` is then set): that request's step 1
      removes the finished job, which must come after the judgement (``JobFailed``,
      …) is committed (DESIGN §4, intent before effect);
    - once an event moves the run off the job ``facts.job`` describes, that job
      (and its worker count) is dropped from the facts: it is behind the run.

    A plan made again on its own result plans nothing new: from ``final`` and the
    facts as the shell reads them after the effect (the same host data, a job the
    plan asked for now freshly queued, a job the run moved past not read), it holds
    no event, or after ``again`` only the retry it stopped short of
    (tests/unit/test_plan_properties.py).
    """
    events: list[Event] = []
    runs: list[Run] = []
    current = run
    for _ in range(limit):
        event = decide(current, facts, now=now, policy=policy)
        if event is None:
            break
        if events and isinstance(event, Requested) and event.job_id == run.job_id:
            return Plan(run, tuple(events), tuple(runs), facts, again=True)
        after = evolve(current, event)
        events.append(event)
        runs.append(after)
        if after.job_id != current.job_id:
            facts = replace(facts, job=None, workers=None)  # that job is behind the run
        current = after
        if isinstance(event, Requested | JobReenqueued) or current.state in TERMINAL:
            break
    return Plan(run, tuple(events), tuple(runs), facts)
