"""Job ids from match ids: a reversible encoding so that any match id makes a job id
BullMQ can carry (pure, no I/O).

A BullMQ job lives under Redis keys ``{prefix}:{queue}:{jobId}``, plus
``…:{jobId}:logs``, ``:lock``, ``:dependencies``, ``:processed`` and more. A raw ``:``
in a job id therefore lets one job's id name another job's key (match ``x:logs``
would be the logs list of match ``x``'s job: ``WRONGTYPE`` on every read), and Node
bullmq 5 refuses a custom id holding ``:`` (unless it has exactly two, its own
repeat-job form) or one that is an integer. python-bullmq 3 checks nothing.

So the match id inside a job id is percent-encoded: ``%``, ``:`` and every control,
format, surrogate or separator character (Unicode categories Cc, Cf, Cs, Zs, Zl, Zp:
newline, ESC, NBSP, U+2028, zero-width space …) become ``%XX`` per UTF-8 byte.
Every other character is kept, so ordinary ids (``m-1``, ``12345``, ``Ünïcödé``)
give the same job id as before; ``epl:2024:123`` gives ``epl%3A2024%3A123``. The
payload's ``matchId`` stays the raw id. An encoded id holds no ``:``, so no job id
can be another key's name; a job id that still breaks a BullMQ rule (an integer, or
one of the queue's own key names such as ``wait``, possible only with an unusual
job-id format) is refused by :func:`refusal` and its run fails at once.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import quote, unquote

ENCODED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})
"""Unicode categories percent-encoded in a job id (besides ``%`` and ``:``)."""
PLACEHOLDER = "{matchId}"
QUEUE_KEYS = frozenset(
    {
        "active",
        "wait",
        "waiting-children",
        "paused",
        "id",
        "delayed",
        "prioritized",
        "stalled-check",
        "completed",
        "failed",
        "stalled",
        "repeat",
        "limiter",
        "meta",
        "events",
        "pc",
        "marker",
        "de",
        "metrics",
    }
)
"""BullMQ's own keys of a queue, ``{prefix}:{queue}:{name}`` (Node bullmq 5
``QueueKeys``, plus ``metrics``, whose ``metrics:completed``/``metrics:failed``
keys a job ``metrics`` would share): a job id equal to one of them would overwrite
it, or its sub-keys would."""
_INTEGER = re.compile(r"0|-?[1-9][0-9]*")
"""A job id Node bullmq reads as an integer (``String(parseInt(id, 10)) === id``)."""
_ENCODED = re.compile(r"(?:[^%:]|%[0-9A-F]{2})+")


def needs_encoding(char: str) -> bool:
    """True when ``char`` (one character) is percent-encoded in a job id."""
    return char in "%:" or unicodedata.category(char) in ENCODED_CATEGORIES


def encode(match_id: str) -> str:
    """``match_id`` as it goes into a job id: ``%``, ``:`` and control/format/separator
    characters as ``%XX`` (UTF-8, upper-case hex), every other character unchanged."""
    return "".join(
        quote(c, safe="", errors="surrogatepass") if needs_encoding(c) else c for c in match_id
    )


def decode(encoded: str) -> str:
    """The match id :func:`encode` made ``encoded`` from (``decode(encode(x)) == x``)."""
    return unquote(encoded, errors="surrogatepass")


def job_id(template: str, match_id: str) -> str:
    """The job id of ``match_id`` by ``template`` (one ``{matchId}``, see
    ``config.check_job_id_format``), e.g. ``analyze-retro-epl%3A2024%3A123``."""
    return template.replace(PLACEHOLDER, encode(match_id))


def refusal(job_id: str) -> str | None:
    """Why BullMQ cannot carry ``job_id`` (the rule broken), or ``None`` if it can."""
    if ":" in job_id:
        return "a job id must not contain ':', BullMQ's key separator"
    if _INTEGER.fullmatch(job_id):
        return "a custom BullMQ job id must not be an integer"
    if job_id in QUEUE_KEYS:
        return f"{job_id!r} is one of BullMQ's own key names of a queue"
    return None


def pattern(templates: Iterable[str]) -> re.Pattern[str]:
    """A regex that fully matches every job id :func:`job_id` makes from ``templates``
    (and no id with a raw ``:``): how the daemon knows its own jobs' events."""
    return re.compile(
        "|".join(
            re.escape(template).replace(re.escape(PLACEHOLDER), _ENCODED.pattern)
            for template in templates
        )
    )
