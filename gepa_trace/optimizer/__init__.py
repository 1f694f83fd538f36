"""The GEPA engine: reflective prompt evolution with one Pareto front per component.

    from gepa_trace.optimizer import Optimizer, OptimizerConfig
    result = Optimizer(evaluator, reflection_lm, seed_prompts, train, val,
                       budget=Budget(max_rollouts=600), store=store, agent="qa-agent",
                       config=OptimizerConfig(seed=1, workers=8)).run()
    result.best_prompts.save("prompts.json")
    # after a crash:  Optimizer.resume(result.run_id, evaluator=..., ...).run()

It depends only on the protocols in ``protocols`` (an ``Evaluator``, a reflection LM
that is ``str -> str``), the shared ``Budget`` and, optionally, the SQL store.
"""

from gepa_trace.optimizer.config import MergeConfig, OptimizerConfig, ReflectionConfig
from gepa_trace.optimizer.engine import Optimizer
from gepa_trace.optimizer.events import (
    BudgetSpent,
    Callbacks,
    CandidateAccepted,
    CandidateProposed,
    CandidateRejected,
    CandidateValidated,
    EventLog,
    FrontChanged,
    IterationStarted,
    OptimizerCallback,
    OptimizerErrorEvent,
    RunStopped,
    ValidationGrown,
)
from gepa_trace.optimizer.pareto import ComponentFront, FrontMember
from gepa_trace.optimizer.persistence import load_run
from gepa_trace.optimizer.protocols import (
    ComponentRecord,
    Evaluator,
    Example,
    ReflectionLM,
    Rollout,
    RolloutContext,
    Score,
)
from gepa_trace.optimizer.reflection import DEFAULT_TEMPLATE
from gepa_trace.optimizer.result import HistoryPoint, OptimizationResult, Totals
from gepa_trace.optimizer.state import Candidate

__all__ = [
    "DEFAULT_TEMPLATE",
    "BudgetSpent",
    "Callbacks",
    "Candidate",
    "CandidateAccepted",
    "CandidateProposed",
    "CandidateRejected",
    "CandidateValidated",
    "ComponentFront",
    "ComponentRecord",
    "Evaluator",
    "EventLog",
    "Example",
    "FrontChanged",
    "FrontMember",
    "HistoryPoint",
    "IterationStarted",
    "MergeConfig",
    "OptimizationResult",
    "Optimizer",
    "OptimizerCallback",
    "OptimizerConfig",
    "OptimizerErrorEvent",
    "ReflectionConfig",
    "ReflectionLM",
    "Rollout",
    "RolloutContext",
    "RunStopped",
    "Score",
    "Totals",
    "ValidationGrown",
    "load_run",
]
