"""The optimizer's settings, grouped in small dataclasses instead of a long argument list.

``OptimizerConfig`` is stored with the run (``to_dict``/``from_dict``) so that a resumed
run continues with the settings it started with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from gepa_trace.errors import ConfigError

CANDIDATE_SELECTIONS = ("pareto", "current_best", "epsilon_greedy")
COMPONENT_SELECTIONS = ("round_robin", "all")
ACCEPTANCES = ("strict_improvement", "improvement_or_equal")
SECONDARY_OBJECTIVES = ("prompt_tokens", "cost")


@dataclass(frozen=True)
class MergeConfig:
    """GEPA's system-aware merge: at most ``max_merges`` accepted merges per run, each
    first tested on a stratified subsample of ``subsample_size`` validation examples."""

    enabled: bool = True
    max_merges: int = 5
    subsample_size: int = 5
    max_attempts: int = 10


#: Fewer validation examples than this tell candidates apart by luck: a run starts on
#: them all, or on this many, whatever ``val_start_share`` says.
MIN_VAL_START = 10

#: The default lookahead, and the rollout budget up to which the default is 1 instead: at
#: 100-200 rollouts the rollouts a wrong guess spends are a share of the budget the
#: search misses (bench/RESULTS.md, "Sample efficiency: what was tried").
LOOKAHEAD = 4
SMALL_BUDGET = 300


@dataclass(frozen=True)
class ReflectionConfig:
    """The reflection prompt: ``max_tokens`` bounds the whole prompt (inputs over it are
    cut with a visible marker); ``templates`` replaces the default template per
    component (placeholders ``<component>``, ``<curr_param>``, ``<side_info>``)."""

    max_tokens: int = 6000
    templates: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerConfig:
    """How the GEPA loop runs. Every field has a default; ``validate()`` names a bad one.

    - ``workers``: rollouts evaluated at once (results do not depend on it).
    - ``lookahead``: reflection iterations run at once, each planned on the guess that
      the ones before it in the window are rejected (most children are). The first
      accepted child ends the window; the iterations after it are planned again from
      the new state, reusing every rollout and proposal that still applies. The
      choices are GEPA's one-at-a-time loop's; what lookahead costs is the rollouts of
      guesses that turned out wrong. With lookahead > 1, while an accepted child is
      validated the next iteration runs on the guess that this child will be its parent
      (adopted if the plan picks it, superseded if not; the run guesses only while
      the guess has held at least as often as not; never with
      ``val_failures_in_minibatch`` or ``val_failures_in_reflection``, which need
      that child's validation scores). Results depend on it, not on
      ``workers``. Reflection calls run on threads of their own (up to
      ``(lookahead + 1) * components``), so the reflection LM must be thread-safe
      (``gepa_trace.lm.LM`` is). None (the default): decided by the run's budget
      (``for_budget``): 1 up to ``SMALL_BUDGET`` rollouts, else ``LOOKAHEAD``.
    - ``candidate_selection``: pareto | current_best | epsilon_greedy (``epsilon``).
    - ``minibatch_size``, ``component_selection`` (round_robin | all), ``val_start``
      and ``val_start_share``: what an iteration costs and what it can teach. GEPA's
      (3 examples, one component per iteration, round robin, the whole validation set)
      spends its first hundred rollouts on a few single-component children, most of
      them rejected because the minibatch held no failure that component causes. The
      defaults (4 examples, every component reflected on and changed in one child,
      validation started on half the set and grown once solved) reached a held-out
      0.74 / 0.89 at 100 / 200 rollouts on the demo against 0.41 / 0.54 for GEPA's
      settings, and 0.66 / 0.89 against 0.39 / 0.52 on the expense desk, both with
      recorded runs read for free (bench/RESULTS.md, "Sample efficiency: what was
      tried"; simulated models).
    - ``acceptance``: strict_improvement (child's minibatch sum > parent's) |
      improvement_or_equal.
    - ``min_score``, ``perfect_score``: the range of the metric's scores. A child's
      minibatch verdict is taken as soon as its finished rollouts fix it (each one
      still running can only add between the two), so a rollout scored outside the
      range is recorded as an evaluator error and its score clamped into it.
      ``perfect_score`` also marks a minibatch the parent solves
      (``skip_perfect_score``) and a solved validation set.
    - ``rollout_retries``: how many more times a failed rollout is run before it counts
      as failed (never as a score); a run stops at the first decision that needs one
      (``optimizer.failures`` has the whole policy).
    - ``patience``: stop after this many iterations without a new best (None: never).
    - ``stop_file``: stop at the next safe point once this path exists.
    - ``secondary_objective``: None, one of ``SECONDARY_OBJECTIVES`` for every front,
      or a mapping component -> objective; it makes that front two-objective.
    - ``warm_start_from``: a run id of the same agent (or "latest") whose front members
      seed this run; ``warm_start_max`` bounds how many.
    - ``max_idle_iterations``: stop after this many iterations in a row that ran
      nothing new (all pairs cached, all minibatches solved, all proposals duplicates).
    - ``lock_stale_seconds``: a lock whose heartbeat is older than this can be taken over.
      The holder renews it on its own thread every tenth of it (at most every 30 s), so
      a live run keeps it however long its steps take (``optimizer.lock``).
    - ``grow_val``: once the best candidate solves every validation example and budget
      is left, grow validation by as many examples as it started with (validation
      examples held back by ``val_start`` first, then training examples in an order
      drawn from ``seed``), score the candidates that solved it on them, and go on;
      the other candidates leave the pool. A small validation set can miss a kind of
      input the agent still gets wrong; without this the run stops once it is solved.
    - ``val_start``: validate on only the first this-many validation examples at first
      (None: ``val_start_share`` of them, rounded up, but at least ``MIN_VAL_START``;
      ignored without ``grow_val``). A smaller set affords more candidates: it pays at
      100-200 rollouts; at 600 on the demo (12 runs) half a 10% set gave no clear gain
      (held-out 0.87 against 0.87).
    - ``val_failures_in_minibatch``: of each minibatch's places, this many (the last)
      go to validation examples the parent fails, when it fails any; 0: all sampled
      from training, as GEPA does. Once the parent solves most inputs, sampled
      minibatches often hold nothing it fails; the parent's rollouts on these are
      stored, and an iteration costs what it did. Held-out test at 100 / 200 rollouts
      over 10 seeds went 0.74 / 0.93 -> 0.88 / 0.96 on the demo and 0.78 / 0.91 ->
      0.85 / 0.96 on the expense desk (bench/RESULTS.md, "Sample efficiency: what was
      tried"; simulated models). How the minibatch test stays honest:
      ``GepaPlanner._minibatch``.
    - ``val_failures_in_reflection``: besides its minibatch, each reflection reads up
      to this many more validation examples its parent fails (their stored rollouts:
      no rollout is spent), drawn per iteration; 0: the minibatch only, as GEPA does.
      A minibatch shows one or two failures; what rule a component needs is clearer
      from more of them, and a component that causes none of them is left alone more
      often. Acceptance is still decided on the minibatch alone
      (``GepaPlanner._reflection_failures``).
    - ``max_user_share``: no end user (``Example.meta["user"]``) has more than
      ``max(1, floor(max_user_share * minibatch_size))`` examples in one minibatch, the
      examples a reflection sees (``optimizer.sampler``); 1: no cap.
    - ``command``: what the command that started the run was given (entry point,
      metric, models, budget, filters), stored with the run so that ``--resume RUN_ID``
      needs nothing else; the loop does not read it.
    """

    seed: int = 0
    workers: int = 4
    lookahead: int | None = None
    minibatch_size: int = 4
    candidate_selection: str = "pareto"
    epsilon: float = 0.1
    component_selection: str = "all"
    acceptance: str = "strict_improvement"
    skip_perfect_score: bool = True
    perfect_score: float = 1.0
    min_score: float = 0.0
    rollout_retries: int = 2
    patience: int | None = None
    stop_file: str | None = None
    secondary_objective: str | Mapping[str, str] | None = None
    merge: MergeConfig = field(default_factory=MergeConfig)
    reflection: ReflectionConfig = field(default_factory=ReflectionConfig)
    warm_start_from: str | None = None
    warm_start_max: int = 4
    lock_stale_seconds: float = 300.0
    max_idle_iterations: int = 30
    handle_signals: bool = True
    grow_val: bool = True
    val_start: int | None = None
    val_start_share: float = 0.5
    max_user_share: float = 0.25
    val_failures_in_minibatch: int = 1
    val_failures_in_reflection: int = 3
    command: Mapping[str, Any] | None = None

    def validate(self) -> OptimizerConfig:
        """Return self, or raise ConfigError naming the first invalid field."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"OptimizerConfig.{name} {why}")

        if not isinstance(self.workers, int) or self.workers < 1:
            raise bad("workers", f"must be an integer >= 1, got {self.workers!r}")
        if self.lookahead is not None and (not isinstance(self.lookahead, int)
                                           or self.lookahead < 1):
            raise bad("lookahead", f"must be None or an integer >= 1, got {self.lookahead!r}")
        if not isinstance(self.minibatch_size, int) or self.minibatch_size < 1:
            raise bad("minibatch_size", f"must be an integer >= 1, got {self.minibatch_size!r}")
        for name in ("val_failures_in_minibatch", "val_failures_in_reflection"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad(name, f"must be an integer >= 0, got {value!r}")
        if self.candidate_selection not in CANDIDATE_SELECTIONS:
            raise bad("candidate_selection", f"must be one of {CANDIDATE_SELECTIONS}, "
                      f"got {self.candidate_selection!r}")
        if self.component_selection not in COMPONENT_SELECTIONS:
            raise bad("component_selection", f"must be one of {COMPONENT_SELECTIONS}, "
                      f"got {self.component_selection!r}")
        if self.acceptance not in ACCEPTANCES:
            raise bad("acceptance", f"must be one of {ACCEPTANCES}, got {self.acceptance!r}")
        if not (math.isfinite(self.min_score) and math.isfinite(self.perfect_score)
                and self.min_score < self.perfect_score):
            raise bad("min_score", f"must be finite and below perfect_score "
                      f"({self.perfect_score!r}), got {self.min_score!r}")
        if not isinstance(self.rollout_retries, int) or self.rollout_retries < 0:
            raise bad("rollout_retries", f"must be an integer >= 0, got {self.rollout_retries!r}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise bad("epsilon", f"must be in [0, 1], got {self.epsilon!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise bad("patience", f"must be None or an integer >= 1, got {self.patience!r}")
        objectives = (self.secondary_objective.values()
                      if isinstance(self.secondary_objective, Mapping)
                      else [self.secondary_objective])
        for objective in objectives:
            if objective is not None and objective not in SECONDARY_OBJECTIVES:
                raise bad("secondary_objective", f"must be one of {SECONDARY_OBJECTIVES}, "
                          f"got {objective!r}")
        if self.merge.max_merges < 0 or self.merge.subsample_size < 1:
            raise bad("merge", "needs max_merges >= 0 and subsample_size >= 1")
        if self.reflection.max_tokens < 200:
            raise bad("reflection.max_tokens", f"must be >= 200, got {self.reflection.max_tokens}")
        for name, template in self.reflection.templates.items():
            missing = [p for p in ("<curr_param>", "<side_info>") if p not in template]
            if missing:
                raise bad("reflection.templates", f"[{name!r}] lacks the placeholders {missing}")
        if not (isinstance(self.val_start_share, (int, float))
                and 0 < self.val_start_share <= 1):
            raise bad("val_start_share", f"must be in (0, 1], got {self.val_start_share!r}")
        if self.val_start is not None and (not isinstance(self.val_start, int)
                                           or self.val_start < 1):
            raise bad("val_start", f"must be None or an integer >= 1, got {self.val_start!r}")
        if not (isinstance(self.lock_stale_seconds, (int, float))
                and math.isfinite(self.lock_stale_seconds) and self.lock_stale_seconds > 0):
            raise bad("lock_stale_seconds",
                      f"must be a number > 0, got {self.lock_stale_seconds!r}")
        if not (isinstance(self.max_user_share, (int, float))
                and 0 < self.max_user_share <= 1):
            raise bad("max_user_share", f"must be in (0, 1], got {self.max_user_share!r}")
        if self.warm_start_max < 1:
            raise bad("warm_start_max", f"must be >= 1, got {self.warm_start_max}")
        return self

    @classmethod
    def gepa(cls, **overrides: Any) -> OptimizerConfig:
        """GEPA's loop as published (the ``gepa`` package's defaults): minibatches of 3,
        one component per iteration in turn, validation on the whole set from the start;
        run ``LOOKAHEAD`` iterations at a time at any budget (the choices are the same;
        only what wrong guesses spend differs); ``overrides`` on top. For comparing with
        GEPA, and for tests of the loop's mechanics written against it."""
        return cls(**{"minibatch_size": 3, "component_selection": "round_robin",
                      "val_start_share": 1.0, "lookahead": LOOKAHEAD,
                      "val_failures_in_minibatch": 0, "val_failures_in_reflection": 0,
                      **overrides})

    def for_budget(self, max_rollouts: int | None) -> OptimizerConfig:
        """This config with ``lookahead`` decided for a run of at most ``max_rollouts``
        rollouts (None: no rollout limit) when it was left to the default: 1 for a budget
        of at most ``SMALL_BUDGET`` rollouts, else ``LOOKAHEAD``."""
        if self.lookahead is not None:
            return self
        small = max_rollouts is not None and max_rollouts <= SMALL_BUDGET
        return replace(self, lookahead=1 if small else LOOKAHEAD)

    def starting_val_size(self, val_size: int) -> int:
        """How many of ``val_size`` validation examples the run validates on first."""
        if not self.grow_val:
            return val_size
        if self.val_start is not None:
            return min(val_size, self.val_start)
        share = math.ceil(val_size * self.val_start_share - 1e-9)
        return min(val_size, max(MIN_VAL_START, share))

    def secondary_for(self, component: str) -> str | None:
        """The secondary objective of ``component``'s front, or None."""
        if isinstance(self.secondary_objective, Mapping):
            return self.secondary_objective.get(component)
        return self.secondary_objective

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reflection"]["templates"] = dict(self.reflection.templates)
        if isinstance(self.secondary_objective, Mapping):
            data["secondary_objective"] = dict(self.secondary_objective)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizerConfig:
        """The config stored with a run; unknown keys (from a newer version) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        # a run stored before the share existed validated on all of its set from the start
        values.setdefault("val_start_share", 1.0)
        # ... and took no validation failures into minibatches or reflections
        values.setdefault("val_failures_in_minibatch", 0)
        values.setdefault("val_failures_in_reflection", 0)
        if isinstance(values.get("merge"), Mapping):
            values["merge"] = MergeConfig(**{k: v for k, v in values["merge"].items()
                                             if k in {f.name for f in fields(MergeConfig)}})
        if isinstance(values.get("reflection"), Mapping):
            values["reflection"] = ReflectionConfig(
                **{k: v for k, v in values["reflection"].items()
                   if k in {f.name for f in fields(ReflectionConfig)}})
        return cls(**values).validate()


#: Said wherever a run's validation score is shown, when ``val_is_optimistic``.
OPTIMISTIC_VAL = ("validation is optimistic: the search also learned from its failures "
                  "(val_failures_in_minibatch / _in_reflection); the held-out test is "
                  "the unbiased score")


def val_is_optimistic(config: OptimizerConfig | dict[str, Any]) -> bool:
    """Whether a run's validation score is biased upward: the search read or trained on
    validation examples it failed, so the best was chosen partly on what it learned
    from (a stored run's config dict: settings it lacks were 0 then)."""
    if isinstance(config, dict):
        return bool(config.get("val_failures_in_minibatch")
                    or config.get("val_failures_in_reflection"))
    return bool(config.val_failures_in_minibatch or config.val_failures_in_reflection)
