"""THE state machine of a backfill run (DESIGN §3): states, transitions, decisions.

Pure: no I/O, no clock reads, no database. ``decide(run, facts, now=…, policy=…)``
returns the next event (or ``None``); ``plan(run, facts, now=…, policy=…)`` holds
every event one reading of the facts allows (the rules of one tick's step);
``evolve(run, event)`` applies one event through its typed mutator;
``project(events)`` folds a whole history. :data:`TRANSITIONS` is the transition
table, as data: which event may happen at which (state, step).

The package's parts, each importing only those before it:

- :mod:`retro.machine.states`: :class:`State`, :class:`Step`, the transition table
  and its lookups (:func:`target`, :func:`legal_triggers`, :func:`legal_steps`),
  and :class:`Run`, the projection;
- :mod:`retro.machine.jobs`: what BullMQ says of a job (:class:`JobView`, its
  :class:`JobState` and :class:`JobMeaning`) and why it waits (:func:`why_waiting`);
- :mod:`retro.machine.facts`: :class:`Facts`, :class:`Policy` and the guards read
  from them (:func:`settleable`, :func:`phase_done`, :func:`cannot_heal`, …);
- :mod:`retro.machine.rules`: :func:`decide` and the rules it reads a job by;
- :mod:`retro.machine.history`: :func:`seed`, :func:`evolve` and :func:`project`;
- :mod:`retro.machine.plans`: :func:`plan` and :class:`Plan`.

Import every name from ``retro.machine``; the parts are its layout, not its API.
"""

from __future__ import annotations

from retro.machine.facts import (
    MAX_BACKOFF,
    NO_EXTERNAL_ID,
    REASON_LIMIT,
    Facts,
    Policy,
    cannot_heal,
    clip,
    has_external_id,
    no_external_id_reason,
    phase_done,
    settleable,
)
from retro.machine.history import evolve, project, seed
from retro.machine.jobs import (
    MEANING,
    JobMeaning,
    JobState,
    JobView,
    Waiting,
    WaitReason,
    why_waiting,
)
from retro.machine.plans import MAX_STEPS_PER_RUN, Plan, plan
from retro.machine.rules import backoff_over, decide, held_by_pause, is_stale, running_for
from retro.machine.states import (
    ANY_STEP,
    CALLED_OFF_STATUSES,
    IN_FLIGHT,
    LIVE,
    NEW,
    OPEN,
    PHASE_OF,
    PLAYABLE_STATUSES,
    SETTLED_STATUSES,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Run,
    State,
    Step,
    legal_steps,
    legal_triggers,
    target,
)

__all__ = [
    "ANY_STEP",
    "CALLED_OFF_STATUSES",
    "IN_FLIGHT",
    "LIVE",
    "MAX_BACKOFF",
    "MAX_STEPS_PER_RUN",
    "MEANING",
    "NEW",
    "NO_EXTERNAL_ID",
    "OPEN",
    "PHASE_OF",
    "PLAYABLE_STATUSES",
    "REASON_LIMIT",
    "SETTLED_STATUSES",
    "TERMINAL",
    "TRANSITIONS",
    "Facts",
    "IllegalTransition",
    "JobMeaning",
    "JobState",
    "JobView",
    "Plan",
    "Policy",
    "Run",
    "State",
    "Step",
    "WaitReason",
    "Waiting",
    "backoff_over",
    "cannot_heal",
    "clip",
    "decide",
    "evolve",
    "has_external_id",
    "held_by_pause",
    "is_stale",
    "legal_steps",
    "legal_triggers",
    "no_external_id_reason",
    "phase_done",
    "plan",
    "project",
    "running_for",
    "seed",
    "settleable",
    "target",
    "why_waiting",
]
