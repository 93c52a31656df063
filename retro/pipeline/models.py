"""42 deterministic baseline models for the predictions stage. Pure.

The reference deployment asks 42 LLMs for a score line; the reference pipeline
stands in with 42 simple statistical rules over the match's
:class:`~retro.pipeline.analysis.Analysis`, eleven families with different
parameters: Poisson modes with several home-advantage factors, draw-inflated
Poisson, rounded expected goals, recency-weighted form, favourite-by-margin,
draw-biased thresholds, fixed score lines, percentage arg-max, goal-difference
rating and underdog picks. No randomness: the same analysis always gives the
same prediction, and the models disagree with each other the way a real panel
does, so Kicktipp quotas vary between matches.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from retro.pipeline.analysis import Analysis, poisson

PROVIDER = "retro-baseline"
MAX_GOALS = 6

Score = tuple[int, int]
Params = tuple[float, ...]


@dataclass(frozen=True)
class BaselineModel:
    """One baseline model: a rule (family) and its parameters."""

    id: str
    model_name: str
    display_name: str
    rule: str
    params: Params
    provider: str = PROVIDER


def _half_up(value: float) -> int:
    return math.floor(value + 0.5)


@lru_cache(maxsize=65536)
def _grid(home_goals: float, away_goals: float) -> tuple[tuple[float, int, int], ...]:
    """(probability, home, away) for every score line up to MAX_GOALS a side."""
    home_p = [poisson(k, home_goals) for k in range(MAX_GOALS + 1)]
    away_p = [poisson(k, away_goals) for k in range(MAX_GOALS + 1)]
    return tuple((ph * pa, h, a) for h, ph in enumerate(home_p) for a, pa in enumerate(away_p))


def _outcome_mode(analysis: Analysis, home_advantage: float, draw_factor: float) -> Score:
    """Most likely outcome first, then the most likely score line within it."""
    return _outcome_mode_of(*_rounded(analysis.expected_goals(home_advantage)), draw_factor)


@lru_cache(maxsize=65536)
def _outcome_mode_of(home_goals: float, away_goals: float, draw_factor: float) -> Score:
    totals = [0.0, 0.0, 0.0]
    best: list[tuple[tuple[float, int, int], int, int] | None] = [None, None, None]
    for p, h, a in _grid(home_goals, away_goals):
        kind = 0 if h > a else 1 if h == a else 2
        weight = p * draw_factor if kind == 1 else p
        totals[kind] += weight
        key = (weight, -(h + a), -h)
        current = best[kind]
        if current is None or key > current[0]:
            best[kind] = (key, h, a)
    chosen = best[max(range(3), key=lambda k: (totals[k], -k))]
    assert chosen is not None
    return chosen[1], chosen[2]


def _rounded(goals: tuple[float, float]) -> tuple[float, float]:
    return round(goals[0], 3), round(goals[1], 3)


def poisson_outcome_mode(analysis: Analysis, params: Params) -> Score:
    """(home_advantage,): most likely outcome, then its most likely score line."""
    return _outcome_mode(analysis, params[0], 1.0)


def poisson_score_mode(analysis: Analysis, params: Params) -> Score:
    """(home_advantage,): the single most likely score line."""
    _, home, away = max(
        _grid(*_rounded(analysis.expected_goals(params[0]))),
        key=lambda c: (c[0], -(c[1] + c[2]), -c[1]),
    )
    return home, away


def poisson_draw_inflated(analysis: Analysis, params: Params) -> Score:
    """(draw_factor,): outcome mode with draw lines weighted up (Dixon-Coles flavour)."""
    return _outcome_mode(analysis, 1.15, params[0])


def mean_round(analysis: Analysis, params: Params) -> Score:
    """(home_advantage, threshold): expected goals rounded up from ``threshold`` on."""
    home_advantage, threshold = params
    home, away = analysis.expected_goals(home_advantage)
    return (
        math.floor(home) + (home % 1 >= threshold),
        math.floor(away) + (away % 1 >= threshold),
    )


def _form_points(form: str) -> float:
    """Recency-weighted points per match (W=3, D=1, L=0; newest weighs most); 1.4 if empty."""
    if not form:
        return 1.4
    values = {"W": 3.0, "D": 1.0, "L": 0.0}
    weights = range(1, len(form) + 1)
    return sum(w * values.get(r, 1.0) for w, r in zip(weights, form, strict=True)) / sum(weights)


def form_weighted(analysis: Analysis, params: Params) -> Score:
    """(margin, open): form difference beyond ``margin`` decides; ``open`` adds a goal each."""
    margin, open_game = params
    diff = _form_points(analysis.home_form) - _form_points(analysis.away_form)
    extra = int(open_game)
    if diff > margin:
        return 1 + extra, extra
    if diff < -margin:
        return extra, 1 + extra
    return extra, extra


def favourite_margin(analysis: Analysis, params: Params) -> Score:
    """(margin,): favourite wins 2-1 beyond ``margin`` points of win percentage, 2-0 beyond
    twice that; 1-1 otherwise."""
    margin = params[0]
    gap = analysis.home_win_pct - analysis.away_win_pct
    if abs(gap) < margin:
        return 1, 1
    win = (2, 0) if abs(gap) >= 2 * margin else (2, 1)
    return win if gap >= 0 else (win[1], win[0])


def draw_threshold(analysis: Analysis, params: Params) -> Score:
    """(threshold, draw_goals): a draw when the win percentages are within ``threshold``."""
    threshold, draw_goals = params
    gap = analysis.home_win_pct - analysis.away_win_pct
    if abs(gap) < threshold:
        return int(draw_goals), int(draw_goals)
    return (2, 1) if gap > 0 else (1, 2)


def constant(analysis: Analysis, params: Params) -> Score:
    """(home, away): always the same score line."""
    return int(params[0]), int(params[1])


def pct_argmax(analysis: Analysis, params: Params) -> Score:
    """(win, lose, draw): the likeliest outcome by percentage, as a fixed score line."""
    win, lose, draw = (int(p) for p in params)
    pcts = {"H": analysis.home_win_pct, "D": analysis.draw_pct, "A": analysis.away_win_pct}
    best = max("HDA", key=lambda t: (pcts[t], -"HDA".index(t)))
    return {"H": (win, lose), "D": (draw, draw), "A": (lose, win)}[best]


def goal_diff_rating(analysis: Analysis, params: Params) -> Score:
    """(home_edge,): margin from the goal-difference ratings, goals from expected totals."""
    home_gd = analysis.home_scored_avg - analysis.home_conceded_avg
    away_gd = analysis.away_scored_avg - analysis.away_conceded_avg
    margin = max(-3, min(3, _half_up((home_gd - away_gd) / 2 + params[0])))
    total = _half_up(sum(analysis.expected_goals()))
    low = 1 if total >= abs(margin) + 2 else 0
    if margin >= 0:
        return low + margin, low
    return low, low - margin


def underdog(analysis: Analysis, params: Params) -> Score:
    """(threshold,): back the underdog by one goal in close matches, else the favourite 2-1."""
    gap = analysis.home_win_pct - analysis.away_win_pct
    home_favoured = gap >= 0
    if abs(gap) < params[0]:
        home_favoured = not home_favoured
    return (2, 1) if home_favoured else (1, 2)


RULES: dict[str, Callable[[Analysis, Params], Score]] = {
    "poisson-outcome-mode": poisson_outcome_mode,
    "poisson-score-mode": poisson_score_mode,
    "poisson-draw-inflated": poisson_draw_inflated,
    "mean-round": mean_round,
    "form-weighted": form_weighted,
    "favourite-margin": favourite_margin,
    "draw-threshold": draw_threshold,
    "constant": constant,
    "pct-argmax": pct_argmax,
    "goal-diff-rating": goal_diff_rating,
    "underdog": underdog,
}

_FAMILIES: list[tuple[str, str, list[tuple[Params, str, str]]]] = [
    (
        "poisson-outcome-mode",
        "Poisson outcome mode",
        [((h,), f"h{h}", f"home x{h}") for h in (1.0, 1.1, 1.2, 1.3, 1.4, 1.5)],
    ),
    (
        "poisson-score-mode",
        "Poisson score mode",
        [((h,), f"h{h}", f"home x{h}") for h in (1.0, 1.2, 1.4)],
    ),
    (
        "poisson-draw-inflated",
        "Draw-inflated Poisson",
        [((r,), f"d{r}", f"draws x{r}") for r in (1.15, 1.3, 1.5)],
    ),
    (
        "mean-round",
        "Rounded expected goals",
        [
            ((h, t), f"h{h}-t{t}", f"home x{h}, up from .{int(t * 10)}")
            for h, t in ((1.1, 0.3), (1.1, 0.5), (1.1, 0.7), (1.3, 0.5))
        ],
    ),
    (
        "form-weighted",
        "Form-weighted",
        [
            ((m, o), f"m{m}-{'open' if o else 'tight'}", f"margin {m}, {'open' if o else 'tight'}")
            for m in (0.4, 0.8, 1.2)
            for o in (0.0, 1.0)
        ],
    ),
    (
        "favourite-margin",
        "Favourite by margin",
        [((m,), f"m{m:g}", f"{m:g} pts") for m in (5.0, 10.0, 20.0, 30.0)],
    ),
    (
        "draw-threshold",
        "Draw-biased",
        [
            ((t, g), f"t{t:g}-{g:g}{g:g}", f"within {t:g} pts, {g:g}-{g:g}")
            for t, g in ((10.0, 1.0), (20.0, 1.0), (30.0, 1.0), (20.0, 0.0))
        ],
    ),
    (
        "constant",
        "Always",
        [((h, a), f"{h:g}-{a:g}", f"{h:g}-{a:g}") for h, a in ((2, 1), (1, 1), (1, 2), (1, 0))],
    ),
    (
        "pct-argmax",
        "Likeliest outcome",
        [
            ((w, lo, d), f"{w:g}{lo:g}{d:g}", f"{w:g}-{lo:g} / {d:g}-{d:g}")
            for w, lo, d in ((2, 1, 1), (2, 0, 0), (3, 1, 2))
        ],
    ),
    (
        "goal-diff-rating",
        "Goal-difference rating",
        [((e,), f"e{e}", f"home edge {e}") for e in (0.0, 0.3, 0.6)],
    ),
    (
        "underdog",
        "Underdog in close games",
        [((t,), f"t{t:g}", f"within {t:g} pts") for t in (8.0, 15.0)],
    ),
]


def _build() -> tuple[BaselineModel, ...]:
    built: list[BaselineModel] = []
    for rule, title, variants in _FAMILIES:
        for params, suffix, label in variants:
            number = len(built) + 1
            built.append(
                BaselineModel(
                    id=f"baseline-{number:02d}",
                    model_name=f"{rule}-{suffix}",
                    display_name=f"{title} ({label})",
                    rule=rule,
                    params=params,
                )
            )
    return tuple(built)


MODELS: tuple[BaselineModel, ...] = _build()
"""The 42 baseline models, ``baseline-01`` … ``baseline-42``."""

MODELS_BY_ID: dict[str, BaselineModel] = {m.id: m for m in MODELS}


def predict(model: BaselineModel, analysis: Analysis) -> Score:
    """The model's predicted (home, away) goals for the analysed match.

    Raises:
        KeyError: the model's rule is unknown.
    """
    home, away = RULES[model.rule](analysis, model.params)
    return max(0, home), max(0, away)


def model_for(model_id: str) -> BaselineModel:
    """The baseline behind a host model id: its own, or for a foreign id (a host's LLM) one
    picked by a stable CRC-32 of the id, so every active model gets a deterministic tip."""
    known = MODELS_BY_ID.get(model_id)
    if known is not None:
        return known
    return MODELS[zlib.crc32(model_id.encode()) % len(MODELS)]
