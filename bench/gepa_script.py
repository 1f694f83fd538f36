"""The script a `gepa` package user writes for a gepa-trace world, shared by the benches
that put our optimizer beside gepa (bench_command.py, bench_sample_efficiency.py).

A world is a dict of references, each ``package.module:attribute``:

- ``agent``: the agent's name in the store; ``entrypoint``: ``build_agent(prompts,
  model=...)``; ``metric``: ``metric(example, output, trace) -> Score``;
  ``seed_prompts``: a PromptSet, or ``{component: template}``; ``app_dir``: a folder
  to import them from first (or None); ``oracle``: the metric that scores the held-out
  test (default ``metric``).

The script reads the same examples from the same store as ``gepa-trace optimize`` (our
``load_examples``: the same train / validation / test split), runs ``gepa.optimize``
with an adapter that runs a batch on ``threads`` threads, and scores prompts on the
held-out test with the world's oracle. ``test_score`` is also how a bench scores our
command's best prompts, so both optimizers are scored the same way.

    python bench/gepa_script.py '{"world": {...}, "store": "sqlite:///x.db", "seed": 0,
        "budget": 100, "threads": 8, "task": "gepa-sim/task",
        "reflect": "gepa-sim/reflect"}'

prints one JSON line: time marks (``imported``, ``loaded``, ``optimized``, ``tested``,
monotonic seconds), ``rollouts``, ``val``, ``test``, ``seed_test`` and ``best`` (the
best candidate's instruction per component).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def load(ref: str) -> Any:
    """``package.module:attribute`` -> the object."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def put_app_dir(world: dict) -> None:
    """The world's ``app_dir`` first on ``sys.path`` (gepa_trace itself comes from the
    installed package, so ``PYTHONPATH`` can point at another checkout)."""
    path = world.get("app_dir")
    if path and path not in sys.path:
        sys.path.insert(0, path)


def seed_prompts_of(world: dict):
    from gepa_trace.prompts import PromptSet

    put_app_dir(world)
    seed = world["seed_prompts"]
    if isinstance(seed, str):
        return load(seed)
    return PromptSet({component: load(ref) for component, ref in seed.items()})


def with_instructions(prompts, instructions: dict[str, str]):
    """``prompts`` with the instruction of each component in ``instructions`` replaced."""
    for component, text in instructions.items():
        prompts = prompts.with_instruction(component, text)
    return prompts


def load_split(world: dict, store: str):
    """The train / validation / test split ``gepa-trace optimize`` reads for a metric
    other than ``feedback`` (every recorded run with inputs, no feedback needed)."""
    from gepa_trace.replay.dataset import load_examples
    from gepa_trace.store import open_store

    return load_examples(open_store(store), world["agent"], need_signal=False)


def run_batch(world: dict, prompts, examples, *, task: str, threads: int,
              metric: Any = None) -> list[tuple[Any, float, str]]:
    """(output, score, feedback) of the agent with ``prompts`` on each example; a run that
    raises scores 0, as in gepa's examples. ``metric``: default the world's metric."""
    from gepa_trace.optimizer.protocols import Score

    put_app_dir(world)
    metric = metric or load(world["metric"])
    agent = load(world["entrypoint"])(prompts, model=task)

    def one(example):
        try:
            output = agent.invoke(dict(example.inputs))
            verdict = Score.checked(metric(example, output, None))
            return output, verdict.score, verdict.feedback
        except Exception as exc:  # noqa: BLE001 - one example's failure scores 0
            return None, 0.0, f"error: {exc}"

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, examples))


def test_score(world: dict, prompts, examples, *, task: str, threads: int) -> float:
    """Mean of the world's oracle over ``examples`` (the held-out test)."""
    put_app_dir(world)
    oracle = load(world.get("oracle") or world["metric"])
    scores = [s for _o, s, _f in run_batch(world, prompts, examples, task=task,
                                           threads=threads, metric=oracle)]
    return sum(scores) / max(1, len(scores))


def optimize(world: dict, data, *, seed_prompts, task: str, reflect: str, budget: int,
             seed: int, threads: int):
    """``gepa.optimize`` over the split's train and validation examples, with gepa's
    defaults otherwise; returns gepa's result."""
    import gepa
    from gepa.core.adapter import EvaluationBatch

    from gepa_trace.lm import LM

    class Adapter:
        propose_new_texts = None

        def evaluate(self, batch, candidate, capture_traces=False):
            results = run_batch(world, with_instructions(seed_prompts, candidate), batch,
                                task=task, threads=threads)
            trajectories = None
            if capture_traces:
                trajectories = [{"inputs": ex.inputs, "output": out, "feedback": fb}
                                for ex, (out, _s, fb) in zip(batch, results)]
            return EvaluationBatch(outputs=[out for out, _s, _f in results],
                                   scores=[s for _o, s, _f in results],
                                   trajectories=trajectories)

        def make_reflective_dataset(self, candidate, eval_batch, components_to_update):
            items = [{"Inputs": _inputs_text(t["inputs"]), "Generated Outputs": str(t["output"]),
                      "Feedback": t["feedback"]} for t in eval_batch.trajectories]
            return {component: items for component in components_to_update}

    class Quiet:
        def log(self, *args, **kwargs):
            pass

    return gepa.optimize(
        seed_candidate={c: seed_prompts.instruction(c) for c in seed_prompts},
        trainset=data.train, valset=data.val, adapter=Adapter(),
        reflection_lm=LM(reflect, role="reflection"), max_metric_calls=budget,
        seed=seed, logger=Quiet(), display_progress_bar=False)


def _inputs_text(inputs: dict) -> str:
    """A run's inputs as the reflection LM reads them: the question alone when that is
    all there is (what the demo's and people-desk's reflective datasets always held)."""
    if set(inputs) == {"question"}:
        return str(inputs["question"])
    return json.dumps(inputs, ensure_ascii=False)


def main(spec: dict) -> None:
    """The user's script, timed by its marks (``run_gepa`` of bench_command.py)."""
    world = spec["world"]
    put_app_dir(world)
    import gepa  # noqa: F401 - imported before the mark, as a script's imports are
    import litellm  # noqa: F401 - what the script's LLM calls need, so startup holds it

    import gepa_trace.replay.dataset  # noqa: F401 - the script's imports, before the mark

    seed_prompts = seed_prompts_of(world)
    for ref in (world["entrypoint"], world["metric"]):
        load(ref)  # the agent's modules, imported before the mark too
    marks = {"imported": time.monotonic()}
    data = load_split(world, spec["store"])
    marks["loaded"] = time.monotonic()
    threads, task = spec["threads"], spec["task"]
    result = optimize(world, data, seed_prompts=seed_prompts, task=task,
                      reflect=spec["reflect"], budget=spec["budget"], seed=spec["seed"],
                      threads=threads)
    marks["optimized"] = time.monotonic()
    best = with_instructions(seed_prompts, result.best_candidate)
    seed_test = test_score(world, seed_prompts, data.test, task=task, threads=threads)
    test = test_score(world, best, data.test, task=task, threads=threads)
    marks["tested"] = time.monotonic()
    marks.update(rollouts=result.total_metric_calls + 2 * len(data.test),
                 val=result.val_aggregate_scores[result.best_idx], test=test,
                 seed_test=seed_test, best=dict(result.best_candidate))
    print(json.dumps(marks))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
