"""Optimize from production traces: examples, agent replay, the replay cache, log-only.

    import gepa_trace as gt
    outcome = gt.optimize("support-agent", entrypoint="app:build_agent", metric="app:metric",
                          reflection_lm="openai/gpt-4.1", budget=gt.Budget(max_rollouts=500))
    outcome.best_prompts.save("prompts.json")
"""

from gepa_trace.replay.heldout import HeldOut, evaluate_held_out
from gepa_trace.replay.optimize import (
    OptimizeOutcome,
    ReplaySettings,
    load_entrypoint,
    optimize,
)

__all__ = [
    "HeldOut",
    "OptimizeOutcome",
    "ReplaySettings",
    "evaluate_held_out",
    "load_entrypoint",
    "optimize",
]
