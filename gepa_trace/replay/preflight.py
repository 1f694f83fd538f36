"""The preflight: before the loop spends anything, try each moving part once.

``gepa_trace.optimize`` (and so ``gepa-trace optimize``, ``--resume`` included) runs it
after loading the examples and before any optimizer state is written:

1. import the entry point and the metric (``import_user_object``); a module is looked
   up in ``app_dir`` (default: the working directory) first, as ``uvicorn --app-dir``;
2. one tiny call to each configured model (``check_models``): the reflection LM, the
   judge LM, the task LM when given (log-only replay: the recorded calls' models), ONE
   attempt each with a short timeout, so a dead endpoint fails in seconds;
3. ``build_agent(seed prompts)`` once (``check_agent``): it must not raise and must
   return something with ``.invoke``;
4. one seed rollout on one training example through the real evaluator, entry point
   and metric (``check_rollout``): the agent must not raise, the metric must not raise
   and must keep its contract (``Score.checked`` with ``OptimizerConfig.min_score`` and
   ``perfect_score``).

Each failure raises ``PreflightFailed`` (CLI exit code 6) with ONE line naming the cause.

What it costs, and what it leaves: the model probes and the rollout's LLM calls are
charged to the run's budget (a few calls; the rollout's are usually replay-cache hits).
The preflight rollout is never a score of the run: it is not written as an evaluation
and the optimizer never sees it. Its spans are recorded like any rollout's, tagged
``gepa.run.id = "preflight"`` (so they are not production runs); steps 1-3 write nothing.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from gepa_trace.errors import ConfigError, GepaTraceError, LMError, PreflightFailed
from gepa_trace.optimizer.protocols import Example, Rollout, RolloutContext, Score
from gepa_trace.prompts import PromptSet
from gepa_trace.store.tables import PREFLIGHT_RUN_ID

PROBE_TIMEOUT_S = 10.0


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def failed(message: str) -> PreflightFailed:
    return PreflightFailed("preflight failed: " + _one_line(message))


def app_path(app_dir: str | os.PathLike | None) -> str:
    """The absolute directory user modules are imported from first (``app_dir``, else
    the working directory). ``ConfigError`` when it is not a directory."""
    path = os.path.abspath(os.fspath(app_dir) if app_dir is not None else os.getcwd())
    if not os.path.isdir(path):
        raise ConfigError(f"--app-dir {app_dir!s}: no such directory")
    return path


def put_on_path(app_dir: str | os.PathLike | None) -> str:
    """Put ``app_path(app_dir)`` first on ``sys.path`` (once) and return it.

    An installed console script does not put the working directory on ``sys.path``;
    without this ``--entrypoint app:build_agent`` run from the folder of ``app.py`` fails
    with ``No module named 'app'``. Worker processes call it too (``ReplayWorker``).
    """
    path = app_path(app_dir)
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    importlib.invalidate_caches()  # a finder may have cached the folder before app.py existed
    return path


def import_user_object(spec: str | Callable | None, what: str,
                       app_dir: str | os.PathLike | None = None) -> Callable | None:
    """``module:function`` (or a callable, or None) -> the callable, imported with
    ``app_dir`` first on ``sys.path``. A failure is a ``PreflightFailed`` naming the spec,
    the exception and where modules were looked up."""
    if spec is None or callable(spec):
        return spec
    from gepa_trace.replay.metrics import load_object

    path = put_on_path(app_dir)
    try:
        return load_object(spec, what)
    except ConfigError as exc:
        hint = ""
        if "cannot be imported" in str(exc):
            hint = f" (modules are looked up in {path} first; --app-dir DIR to change)"
        raise failed(f"{exc}{hint}") from exc


def check_models(models: Mapping[str, Any], timeout: float = PROBE_TIMEOUT_S) -> None:
    """One tiny call to each ``{label: LM}`` (``LM.probe``); callables that are not a
    ``gepa_trace.lm.LM`` (a Python reflection function) are not called."""
    from gepa_trace.lm import LM

    seen: set[int] = set()
    for label, lm in models.items():
        if not isinstance(lm, LM) or id(lm) in seen:
            continue
        seen.add(id(lm))
        try:
            lm.probe(timeout=timeout)
        except LMError as exc:
            raise failed(f"the {label} ({lm.model}) does not answer: {exc}") from exc


def check_agent(build_agent: Callable[[PromptSet], Any], prompts: PromptSet) -> Any:
    """``build_agent(prompts)`` once: it must return something with ``.invoke``."""
    try:
        runnable = build_agent(prompts)
    except Exception as exc:  # the user's function: any exception is the finding
        raise failed(f"build_agent raised {type(exc).__name__}: {exc}") from exc
    if runnable is None or not callable(getattr(runnable, "invoke", None)):
        raise failed(f"build_agent returned {_shown(runnable)}, not a runnable with .invoke "
                     "(return the agent, e.g. prompt | model)")
    return runnable


def check_rollout(evaluator: Any, prompts: PromptSet, example: Example, *,
                  low: float, high: float) -> Rollout:
    """One rollout of ``prompts`` on ``example``; its error, or a score outside the
    metric contract, is a ``PreflightFailed``. The rollout is returned, never stored."""
    context = RolloutContext(PREFLIGHT_RUN_ID, 0, "preflight", (low, high))
    try:
        rollout = evaluator.evaluate(prompts, example, context)
    except GepaTraceError as exc:  # e.g. the budget is already spent
        raise failed(f"the seed rollout on example {example.id} failed: {exc}") from exc
    except Exception as exc:  # a worker process's failure comes back as an exception
        raise failed(f"the seed rollout on example {example.id} failed: "
                     f"{type(exc).__name__}: {exc}") from exc
    if rollout.error:
        raise failed(_rollout_error(rollout.error, example))
    try:
        Score.checked(rollout.score, low, high)
    except GepaTraceError as exc:
        raise failed(f"on example {example.id}, {exc}") from exc
    return rollout


def _rollout_error(error: str, example: Example) -> str:
    """The evaluator's error string ("the agent raised ...", "the metric raised ...",
    "...MetricContractError: ..."), as the cause a user acts on."""
    contract = "MetricContractError: "
    if contract in error:
        detail = error[error.index(contract) + len(contract):]
        return f"the metric breaks its contract on example {example.id}: {detail}"
    prefix = "the metric raised "
    if error.startswith(prefix):
        return f"the metric raised on example {example.id}: {error[len(prefix):]}"
    detail = error.removeprefix("the agent raised ")
    return f"the agent raised on example {example.id}: {detail}"


def _shown(value: Any) -> str:
    if value is None:
        return "None"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"
