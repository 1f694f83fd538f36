"""Issue 4, acceptance 2: our optimizer against the `gepa` package on the same agent.

Both optimize the demo multi-hop QA agent (gepa_trace.demo, three prompt components)
from SEED_PROMPTS, with the same simulated models (``gepa-sim/task`` runs the agent,
``gepa-sim/reflect`` reflects; both with injected latency per LLM call, 100 ms by
default), the same train / validation examples and the same budget in rollouts
(gepa: ``max_metric_calls``). gepa runs through a ``GEPAAdapter`` over the same
in-process ``AgentEvaluator``, with gepa's defaults otherwise. Our optimizer runs twice:
as ``gepa-trace optimize`` runs it (agent replay traced into a store, with the replay
cache) and over the same in-process evaluator gepa gets (no cache). The
plain adapter evaluates a batch one example after another (gepa's loop is sequential and
leaves concurrency to the adapter); a second gepa row gives the adapter a thread pool of
``--workers`` threads per batch, the strongest gepa baseline we can build without
changing gepa.

Printed side by side and appended to bench/RESULTS.md: final validation and held-out
test score (test scored afterwards, without latency, outside the budget), rollouts, LLM
calls served by the simulated models during the optimization, and wall time.

    .venv/bin/python bench/bench_optimizer_vs_gepa.py            # all four rows
    .venv/bin/python bench/bench_optimizer_vs_gepa.py --no-gepa-sequential   # quicker

All numbers are from the simulated world and are labelled so.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gepa_trace.demo import SEED_PROMPTS, build_agent, metric, questions
from gepa_trace.demo.evaluator import AgentEvaluator, accuracy
from gepa_trace.errors import ConfigError
from gepa_trace.lm import (
    LM,
    Budget,
    sim,
)
from gepa_trace.optimizer import Optimizer, OptimizerConfig
from gepa_trace.optimizer.config import LOOKAHEAD
from gepa_trace.optimizer.protocols import Rollout


class AgentAdapter:
    """A GEPAAdapter over the demo agent: a gepa candidate is the instruction text of each
    component; the reflective dataset of a component holds that component's records."""

    def __init__(self, evaluator: AgentEvaluator, threads: int = 1):
        self.evaluator = evaluator
        self.threads = threads
        self.propose_new_texts = None

    def _prompts(self, candidate: dict[str, str]):
        prompts = SEED_PROMPTS
        for component, text in candidate.items():
            prompts = prompts.with_instruction(component, text)
        return prompts

    def evaluate(self, batch, candidate, capture_traces=False):
        from gepa.core.adapter import EvaluationBatch

        try:
            prompts = self._prompts(candidate)
        except ConfigError as exc:  # a proposal that broke the template: every example fails
            rollouts = [Rollout(score=0.0, feedback=str(exc), error=str(exc)) for _ in batch]
        else:
            if self.threads > 1:
                with ThreadPoolExecutor(self.threads) as pool:
                    rollouts = list(pool.map(lambda ex: self.evaluator.evaluate(prompts, ex),
                                             batch))
            else:
                rollouts = [self.evaluator.evaluate(prompts, ex) for ex in batch]
        return EvaluationBatch(outputs=[r.output for r in rollouts],
                               scores=[r.score for r in rollouts],
                               trajectories=rollouts if capture_traces else None)

    def make_reflective_dataset(self, candidate, eval_batch, components_to_update):
        out = {}
        for component in components_to_update:
            items = []
            for rollout in eval_batch.trajectories:
                records = rollout.records.get(component, [])
                items.append({
                    "Inputs": "\n\n".join(r.inputs for r in records) or "(not called)",
                    "Generated Outputs": "\n\n".join(r.output for r in records) or "(none)",
                    "Feedback": rollout.feedback or ("correct" if rollout.score >= 1 else ""),
                })
            out[component] = items
        return out


class _Timed:
    """An evaluator that adds up how long its rollouts took (rollout-seconds): divided by
    the workers, the least wall time those rollouts could have taken."""

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.seconds = 0.0
        self._lock = threading.Lock()

    def evaluate(self, prompts, example, context):
        started = time.monotonic()
        try:
            return self.evaluator.evaluate(prompts, example, context)
        finally:
            with self._lock:
                self.seconds += time.monotonic() - started


def _mean_row(name: str, per_seed: list[dict]) -> dict:
    def mean(key):
        return sum(row[key] for row in per_seed) / len(per_seed)

    return {"name": name, "val": mean("val"), "test": mean("test"),
            "tests": " / ".join(f"{row['test']:.2f}" for row in per_seed),
            "rollouts": mean("rollouts"), "llm_calls": mean("llm_calls"),
            "task": sum(r["calls_by_model"].get("task", 0) for r in per_seed) / len(per_seed),
            "reflect": sum(r["calls_by_model"].get("reflect", 0) for r in per_seed)
            / len(per_seed),
            "wall": mean("wall"), "cpu": mean("cpu"),
            "rollout_s": mean("rollout_s") if "rollout_s" in per_seed[0] else None,
            "stops": [str(row.get("stop")) for row in per_seed],
            "superseded": ", ".join(f"{row.get('superseded', 0)} "
                                    f"({row.get('superseded_rollouts', 0)} rollouts)"
                                    for row in per_seed),
            "speculated": ", ".join(f"{row.get('speculated_adopted', 0)} of "
                                    f"{row.get('speculated', 0)}" for row in per_seed)}


class _Quiet:
    def log(self, *args, **kwargs):
        pass


def _served() -> int:
    return sum(sim.call_counts().values())


def run_gepa(train, val, budget: int, latency_ms: float, threads: int, seed: int) -> dict:
    import gepa

    evaluator = AgentEvaluator(build_agent, metric,
                               model=f"gepa-sim/task?latency_ms={latency_ms:g}")
    reflection = LM(f"gepa-sim/reflect?latency_ms={latency_ms:g}", role="reflection")
    sim.reset_call_counts()
    started = time.monotonic()
    result = gepa.optimize(
        seed_candidate={c: SEED_PROMPTS.instruction(c) for c in SEED_PROMPTS},
        trainset=train, valset=val, adapter=AgentAdapter(evaluator, threads),
        reflection_lm=reflection, max_metric_calls=budget, seed=seed, logger=_Quiet(),
        display_progress_bar=False)
    wall = time.monotonic() - started
    calls = sim.call_counts()
    prompts = AgentAdapter(evaluator)._prompts(result.best_candidate)
    return {"val": result.val_aggregate_scores[result.best_idx], "prompts": prompts,
            "rollouts": result.total_metric_calls, "llm_calls": sum(calls.values()),
            "calls_by_model": calls, "wall": wall}


def _our_row(result, calls: dict, wall: float, rollout_s: float) -> dict:
    return {"val": result.best_val_score, "prompts": result.best_prompts,
            "rollout_s": rollout_s,
            "rollouts": result.totals.rollouts, "llm_calls": sum(calls.values()),
            "calls_by_model": calls, "wall": wall, "stop": result.stop_reason,
            "superseded": result.totals.superseded,
            "superseded_rollouts": result.totals.superseded_rollouts,
            "speculated": result.totals.speculated,
            "speculated_adopted": result.totals.speculated_adopted}


def run_ours(train, val, budget: int, latency_ms: float, workers: int, seed: int,
             lookahead: int) -> dict:
    evaluator = _Timed(AgentEvaluator(build_agent, metric,
                                      model=f"gepa-sim/task?latency_ms={latency_ms:g}"))
    limits = Budget(max_rollouts=budget)
    reflection = LM(f"gepa-sim/reflect?latency_ms={latency_ms:g}", budget=limits, role="reflection")
    sim.reset_call_counts()
    started = time.monotonic()
    result = Optimizer(evaluator, reflection, SEED_PROMPTS, train, val, limits, agent="demo-qa",
                       config=OptimizerConfig(seed=seed, workers=workers,
                                                      lookahead=lookahead)).run()
    wall = time.monotonic() - started
    calls = sim.call_counts()
    return _our_row(result, calls, wall, evaluator.seconds)


def run_ours_replayed(train, val, budget: int, latency_ms: float, workers: int,
                      seed: int, lookahead: int) -> dict:
    """Our optimizer as `gepa-trace optimize` runs it: every rollout a traced run of the
    agent (agent replay, into a SQLite store) with the replay cache on, which answers a
    call already made in an earlier rollout of the run instead of sending it again."""
    import tempfile

    from langchain_core.globals import get_llm_cache, set_llm_cache

    import gepa_trace as gt
    from gepa_trace.replay.cache import ReplayCache
    from gepa_trace.replay.harness import AgentReplay

    model = f"gepa-sim/task?latency_ms={latency_ms:g}"
    with tempfile.TemporaryDirectory() as tmp:
        store = gt.open_store(f"sqlite:///{tmp}/bench.db", create=True)
        inst = gt.instrument(store=store, service_name="demo-qa")
        evaluator = _Timed(AgentReplay(lambda prompts: build_agent(prompts, model=model),
                                       metric, agent="demo-qa", instrumentation=inst))
        limits = Budget(max_rollouts=budget)
        reflection = LM(f"gepa-sim/reflect?latency_ms={latency_ms:g}", budget=limits,
                        role="reflection")
        previous = get_llm_cache()
        set_llm_cache(ReplayCache())
        sim.reset_call_counts()
        started = time.monotonic()
        try:
            result = Optimizer(evaluator, reflection, SEED_PROMPTS, train, val, limits,
                               store=store, agent="demo-qa",
                               config=OptimizerConfig(seed=seed, workers=workers,
                                                      lookahead=lookahead)).run()
        finally:
            set_llm_cache(previous)
        wall = time.monotonic() - started
        calls = sim.call_counts()
        inst.shutdown()
    return _our_row(result, calls, wall, evaluator.seconds)


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_ours_processes(train, val, budget: int, latency_ms: float, workers: int,
                       seed: int, lookahead: int, processes: int) -> dict:
    """As shipped with ``--processes``: the same agent replay and replay cache, in
    ``processes`` worker processes (spawned once, at the warm-up run, and reused)."""
    import functools
    import tempfile

    import gepa_trace as gt
    from gepa_trace.optimizer.processes import ProcessEvaluator
    from gepa_trace.replay.workers import ReplayWorker

    model = f"gepa-sim/task?latency_ms={latency_ms:g}"
    with tempfile.TemporaryDirectory() as tmp:
        store = gt.open_store(f"sqlite:///{tmp}/bench.db", create=True)
        limits = Budget(max_rollouts=budget)
        factory = ReplayWorker(store.url, "demo-qa", functools.partial(build_agent, model=model),
                               metric)
        reflection = LM(f"gepa-sim/reflect?latency_ms={latency_ms:g}", budget=limits,
                        role="reflection")
        sim.reset_call_counts()
        started = time.monotonic()
        with ProcessEvaluator(factory, processes=processes, threads=workers,
                              budget=limits) as remote:
            pids = [w.process.pid for w in remote.workers]
            child_cpu = sum(_cpu_of(pid) for pid in pids)
            evaluator = _Timed(remote)
            result = Optimizer(evaluator, reflection, SEED_PROMPTS, train, val, limits,
                               store=store, agent="demo-qa",
                               config=OptimizerConfig(seed=seed, workers=workers,
                                                      lookahead=lookahead)).run()
        wall = time.monotonic() - started
        child_cpu = sum(_cpu_of(pid) for pid in pids) - child_cpu
        # the task model answers in the worker processes: count its calls from the
        # rollouts' spans (the same count the in-process rows read from the simulator)
        calls = {"task": result.totals.llm_calls_by_role.get("task", 0),
                 "reflect": sim.call_counts().get("reflect", 0)}
    row = _our_row(result, calls, wall, evaluator.seconds)
    row["child_cpu"] = child_cpu
    return row


@contextlib.contextmanager
def _without(*methods: str):
    """Our optimizer with these speculation steps turned into no-ops (each returns None,
    which is what it returns when its guess is not worth making): the decisions stay
    the planner's, only what runs ahead changes."""
    for name in methods:
        setattr(Optimizer, name, lambda self, *args, **kwargs: None)
    try:
        yield
    finally:
        for name in methods:
            delattr(Optimizer, name)


# (name, lookahead, speculation steps turned off)
LOOKAHEAD_VARIANTS = [
    ("as shipped: windows + parent guess + run-ahead", None, ()),
    ("no run-ahead while a window is judged (Guess.REJECTED off)", None, ("_run_ahead",)),
    ("no next iteration while a child is validated (Guess.PARENT off)", None, ("_speculate",)),
    ("windows only (both guesses off)", None, ("_run_ahead", "_speculate")),
    ("--lookahead 1: GEPA's one-at-a-time loop", 1, ()),
]


def lookahead_rows(args, train, val, test, seed_test: float, seeds: list[int]) -> int:
    """What each piece of speculation buys: our in-process optimizer (no cache) on the
    same seeds with the pieces turned off one at a time, runs interleaved by seed."""
    print("warming up ...", file=sys.stderr, flush=True)
    LM("gepa-sim/reflect", role="reflection")("warm up")
    run_ours(train[:3], val[:3], 6, 0.0, args.workers, 0, args.lookahead)
    per_variant: dict[str, list[dict]] = {name: [] for name, _l, _o in LOOKAHEAD_VARIANTS}
    for seed in seeds:
        for name, lookahead, off in LOOKAHEAD_VARIANTS:
            print(f"running {name}, seed {seed} ...", file=sys.stderr, flush=True)
            cpu = time.process_time()
            with _without(*off):
                row = run_ours(train, val, args.budget, args.latency_ms, args.workers, seed,
                               lookahead or args.lookahead)
            row["cpu"] = time.process_time() - cpu
            row["test"], _ = accuracy(row["prompts"], test, threads=4)
            per_variant[name].append(row)
            print(f"  done in {row['wall']:.1f}s, test {row['test']:.3f}", file=sys.stderr,
                  flush=True)
    lines = [("| our optimizer, in-process, no cache | val | test (per seed) | rollouts "
              "| superseded children (rollouts), per seed | run ahead: adopted of run, per seed "
              "| wall s (per seed) | CPU s |"), "|---|---|---|---|---|---|---|---|",
             f"| seed prompts | | {seed_test:.3f} | | | | | |"]
    for name, lookahead, _off in LOOKAHEAD_VARIANTS:
        rows = per_variant[name]
        row = _mean_row(name, rows)
        walls = " / ".join(f"{r['wall']:.1f}" for r in rows)
        lines.append(f"| {name} (lookahead {lookahead or args.lookahead}) | {row['val']:.3f} "
                     f"| {row['test']:.3f} ({row['tests']}) | {row['rollouts']:.0f} "
                     f"| {row['superseded']} | {row['speculated']} | {row['wall']:.1f} "
                     f"({walls}) | {row['cpu']:.1f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        command = "bench/bench_optimizer_vs_gepa.py " + " ".join(sys.argv[1:])
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        heading = "Optimizer vs gepa: what lookahead buys (bench/bench_optimizer_vs_gepa.py " \
                  "--lookahead-rows)"
        section = (
            f"## {heading}\n\n`.venv/bin/python {command.strip()}` on {when}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}. The world of the "
            f"section above ({args.latency_ms:g} ms per LLM call, budget {args.budget} "
            f"rollouts, {args.workers} workers, seeds {args.seeds}), our in-process row only, "
            f"with the speculation steps turned off one at a time (the decisions stay the "
            f"planner's; what a wrong guess runs is superseded and counted in the budget). "
            f"Runs interleaved by seed. The machine may have been shared with other jobs."
            f"\n\n{table}\n")
        from results import write_section  # bench/results.py, beside this file

        write_section(heading, section)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=600, help="rollouts for each optimizer")
    parser.add_argument("--latency-ms", type=float, default=100.0,
                        help="latency injected into every simulated LLM call")
    parser.add_argument("--workers", type=int, default=16, help="our rollout workers, and the "
                        "threaded gepa adapter's threads")
    parser.add_argument("--processes", type=int, default=2,
                        help="worker processes of the as-shipped row (--processes)")
    parser.add_argument("--lookahead", type=int, default=LOOKAHEAD,
                        help="our reflection iterations run at once (the default at budgets "
                             "over 300)")
    parser.add_argument("--seeds", default="0,1,2",
                        help="optimizer seeds, comma separated; each row is their mean")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--val", type=int, default=30)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--no-gepa-sequential", action="store_true",
                        help="skip the plain (sequential) gepa adapter, the slowest row")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--lookahead-rows", action="store_true",
                        help="instead: only our in-process row, with each piece of "
                             "speculation turned off in turn and with --lookahead 1, seeds "
                             "interleaved (its own RESULTS.md section)")
    args = parser.parse_args(argv)

    train, val = questions(args.train, seed=101), questions(args.val, seed=202)
    test = questions(args.test, seed=303)
    seed_test, _ = accuracy(SEED_PROMPTS, test, threads=4)
    seeds = [int(x) for x in args.seeds.split(",")]
    if args.lookahead_rows:
        return lookahead_rows(args, train, val, test, seed_test, seeds)
    # one tiny untimed run of each optimizer first: the first run in a process pays
    # one-time costs (importing litellm alone takes seconds), which no row should carry
    print("warming up ...", file=sys.stderr, flush=True)
    LM("gepa-sim/reflect", role="reflection")("warm up")  # litellm's first call in a process
    run_ours_processes(train[:3], val[:3], 6, 0.0, args.workers, 0, args.lookahead,
                       args.processes)  # starts the worker processes, kept for the runs
    run_ours_replayed(train[:3], val[:3], 6, 0.0, args.workers, 0, args.lookahead)
    run_ours(train[:3], val[:3], 6, 0.0, args.workers, 0, args.lookahead)
    run_gepa(train[:3], val[:3], 6, 0.0, args.workers, 0)
    runs = [((f"gepa-trace optimizer, agent replay + replay cache in {args.processes} "
              f"worker processes (as shipped, --processes {args.processes})"),
             lambda seed: run_ours_processes(train, val, args.budget, args.latency_ms,
                                             args.workers, seed, args.lookahead,
                                             args.processes)),
            ("gepa-trace optimizer, agent replay + replay cache in one process",
             lambda seed: run_ours_replayed(train, val, args.budget, args.latency_ms,
                                            args.workers, seed, args.lookahead)),
            ("gepa-trace optimizer, in-process evaluator, no cache",
             lambda seed: run_ours(train, val, args.budget, args.latency_ms, args.workers,
                                   seed, args.lookahead)),
            (f"gepa.optimize, adapter with {args.workers} threads",
             lambda seed: run_gepa(train, val, args.budget, args.latency_ms, args.workers,
                                   seed))]
    if not args.no_gepa_sequential:
        runs.append(("gepa.optimize, sequential adapter",
                     lambda seed: run_gepa(train, val, args.budget, args.latency_ms, 1, seed)))
    rows = []
    for name, run in runs:
        per_seed = []
        for seed in seeds:
            print(f"running {name}, seed {seed} ...", file=sys.stderr, flush=True)
            cpu = time.process_time()
            row = run(seed)
            row["cpu"] = time.process_time() - cpu + row.get("child_cpu", 0.0)
            row["test"], _ = accuracy(row["prompts"], test, threads=4)
            per_seed.append(row)
            print(f"  done in {row['wall']:.1f}s, test {row['test']:.3f}", file=sys.stderr,
                  flush=True)
        rows.append(_mean_row(name, per_seed))

    theirs = [row for row in rows if row["name"].startswith("gepa.optimize")]
    header = ("| optimizer | val | test (per seed) | rollouts | LLM calls (task + reflect) "
              "| wall s | CPU s |\n|---|---|---|---|---|---|---|")
    lines = [header]
    lines.append(f"| seed prompts | | {seed_test:.3f} | | | | |")
    for row in rows:
        lines.append(f"| {row['name']} | {row['val']:.3f} | {row['test']:.3f} "
                     f"({row['tests']}) | {row['rollouts']:.0f} | {row['llm_calls']:.0f} "
                     f"({row['task']:.0f} + {row['reflect']:.0f}) | {row['wall']:.1f} | "
                     f"{row['cpu']:.1f} |")
    table = "\n".join(lines)
    print(table)
    verdicts = []
    ours_rows = [row for row in rows if not row["name"].startswith("gepa.optimize")]
    for ours, row in [(m, r) for m in ours_rows for r in theirs]:
        verdicts.append(
            f"{ours['name']} vs {row['name']}: test {ours['test']:.3f} vs {row['test']:.3f} "
            f"({'met' if ours['test'] >= row['test'] else 'NOT met'}), LLM calls "
            f"{ours['llm_calls']:.0f} vs {row['llm_calls']:.0f} "
            f"({'met' if ours['llm_calls'] <= row['llm_calls'] else 'NOT met'}), wall "
            f"{ours['wall']:.1f}s vs {row['wall']:.1f}s = {ours['wall'] / row['wall']:.2f}x "
            f"({'met' if ours['wall'] <= row['wall'] / 4 else 'NOT met'}, target <= 0.25x)")
    for row in theirs[:1]:
        verdicts.append(
            f"CPU floor: {rows[1]['name']} used {rows[1]['cpu']:.1f} s of CPU, "
            f"{rows[1]['cpu'] / row['wall']:.2f}x of {row['name']}'s wall time; its rollouts "
            f"run on threads of one Python process, where the GIL lets about one core run "
            f"Python at a time, so its wall time cannot go much below its CPU time. In "
            f"{args.processes} worker processes the same rollouts used {rows[0]['cpu']:.1f} s "
            f"of CPU (parent and workers) on {os.cpu_count()} cores")
    for row in ours_rows:
        for other in theirs[:1]:
            floor = row["rollout_s"] / args.workers
            verdicts.append(
                f"Rollout floor: {row['name']}'s rollouts took {row['rollout_s']:.0f} "
                f"rollout-seconds; on {args.workers} workers they need at least {floor:.1f} s "
                f"of wall time, {floor / other['wall']:.2f}x of the wall time of "
                f"{other['name']}")
    for verdict in verdicts:
        print(verdict)
    if not args.no_write:
        from results import measured_with  # bench/results.py, beside this file

        heading = ("Optimizer vs gepa (bench/bench_optimizer_vs_gepa.py)" if args.workers == 16
                   else f"Optimizer vs gepa at {args.workers} workers "
                        f"(bench/bench_optimizer_vs_gepa.py --workers {args.workers})")
        section = (
            f"\n## {heading}\n\n"
            f"{measured_with('bench_optimizer_vs_gepa.py', argv)}. "
            f"Simulated world: the demo QA agent (3 components) on `gepa-sim/task`, "
            f"reflection by `gepa-sim/reflect`, {args.latency_ms:g} ms injected per LLM call; "
            f"seeds {args.seeds} (each row is the mean over them); "
            f"{args.train} train / {args.val} validation questions, {args.test} held-out test "
            f"questions scored afterwards; budget {args.budget} rollouts each (gepa: "
            f"max_metric_calls); our optimizer with {args.workers} workers and lookahead "
            f"{args.lookahead} (as shipped: in {args.processes} worker processes, each "
            f"running up to {args.workers} rollouts), stop reasons (as shipped): "
            f"{'; '.join(rows[0]['stops'])}; children proposed ahead and superseded (as "
            f"shipped, per seed): {rows[0]['superseded']}; iterations run ahead on a guess "
            f"(that a validated child is the next parent, or that a window's children are "
            f"all rejected), adopted of run (as shipped, per seed): {rows[0]['speculated']}. "
            f"Each optimizer first does one tiny untimed run, so no row pays one-time "
            f"imports. CPU s is the CPU time of the benchmark process during the run (all "
            f"threads), plus its worker processes' for the as-shipped row "
            f"({os.cpu_count()} cores). LLM calls are the replies the simulated models "
            f"served during the optimization (the as-shipped row counts its task model's "
            f"from the rollouts' spans: it answers in the worker processes). The machine "
            f"may have been shared with other jobs.\n\n"
            f"{table}\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")
        from results import write_section  # bench/results.py, beside this file

        write_section(heading, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
