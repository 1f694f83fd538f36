"""Issue 22, acceptance 3: the whole `gepa-trace optimize` command against the `gepa` package.

Both are timed as a user's shell runs them: a fresh process, from its start to its exit.
Ours is ``gepa-trace optimize`` on a store of recorded production runs (agent replay,
the replay cache, the preflight, the held-out test, the run's totals). Theirs is a
script a gepa user would write for the same job: import, read the same examples from
the same store (our ``load_examples``: the same train / validation / test split), run
``gepa.optimize`` with a ``GEPAAdapter`` that runs a batch on 8 threads, then score the
seed and the best candidate on the held-out test with 8 threads. Same agent, same
simulated models with the same injected latency per LLM call (100 ms by default), same
budget in rollouts (gepa: ``max_metric_calls``), runs interleaved (ours, theirs, per
seed), each on a fresh copy of the store.

Two agents: the demo multi-hop QA agent (three LLM calls per run) and a light one,
``tests/apps/people_app.py`` (two components, two LLM calls per run).

The split of a run: ``startup`` (process start to the first line our command prints /
gepa's script has imported what it needs), ``examples`` (reading examples; ours also runs
the preflight: one probe per model and one seed rollout), ``loop``, ``held-out``, and
``export`` (what is left until the process has exited: storing the run's totals,
printing, interpreter exit). Ours is read from the phase seconds the command stores in
the run's totals (``--json``: ``spent.phases``) and the time its first stderr line
arrived; gepa's script reports its own marks.

    .venv/bin/python bench/bench_command.py                 # both agents, seeds 0,1
    .venv/bin/python bench/bench_command.py --agents people --seeds 0 --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
PHASES = ("startup", "examples", "loop", "held_out", "export")

AGENTS = {
    "demo": {"name": "demo-qa", "entrypoint": "gepa_trace.demo:build_agent",
             "metric": "gepa_trace.demo:metric", "app_dir": None},
    "people": {"name": "people-desk", "entrypoint": "people_app:build_agent",
               "metric": "people_app:metric", "app_dir": str(APPS)},
}


def _models(latency_ms: float) -> tuple[str, str]:
    return (f"gepa-sim/task?latency_ms={latency_ms:g}",
            f"gepa-sim/reflect?latency_ms={latency_ms:g}")


# ----------------------------------------------------------------- the recorded store


def record_store(kind: str, path: Path, runs: int, latency_ms: float) -> str:
    """A SQLite store of ``kind``'s production runs with feedback, recorded with the
    task model the optimization replays (so the replay cache can answer its calls)."""
    url = f"sqlite:///{path}"
    task, _ = _models(latency_ms)
    code = (_RECORD_DEMO if kind == "demo" else _RECORD_PEOPLE).format(
        url=url, task=task, runs=runs, apps=str(APPS))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return url


_RECORD_DEMO = """
from gepa_trace.demo.traffic import run_traffic
from gepa_trace.collectors.instrument import active_instrumentation
run_traffic({runs}, store={url!r}, seed=0, feedback_rate=0.5, model={task!r}, threads=8)
active_instrumentation().shutdown()
"""

_RECORD_PEOPLE = """
import sys
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, {apps!r})
import gepa_trace as gt
import people_app as app

inst = gt.instrument(store={url!r}, service_name=app.AGENT)
agent = app.build_agent(gt.PromptSet({{"picker": app.picker, "replier": app.replier}}),
                        model={task!r})

def one(question):
    with gt.agent_run(app.AGENT, inputs={{"question": question}}) as run:
        out = agent.invoke({{"question": question}})
        run.set_outputs(out)
    return run.trace_id, question, out

with ThreadPoolExecutor(8) as pool:
    done = list(pool.map(one, app.QUESTIONS[:{runs}]))
inst.force_flush()
for trace_id, question, out in done:
    right = app.ANSWERS[question]
    if out.strip().rstrip(".") == right:
        gt.record_feedback(trace_id, score=1.0)
    else:
        gt.record_feedback(trace_id, score=0.0, comment=f"the answer should be {{right}}")
inst.shutdown()
"""


# ----------------------------------------------------------------- our command


def run_ours(kind: str, store_file: Path, args, seed: int, code: str | None = None) -> dict:
    """``gepa-trace optimize``; ``code``: a checkout whose own ``.venv`` (an editable
    install of it) to run instead."""
    agent = AGENTS[kind]
    task, reflect = _models(args.latency_ms)
    bin_dir = Path(code) / ".venv" / "bin" if code else Path(sys.executable).parent
    command = [str(bin_dir / "gepa-trace"), "optimize",
               "--agent", agent["name"], "--entrypoint", agent["entrypoint"],
               "--metric", agent["metric"], "--task-lm", task, "--reflection-lm", reflect,
               "--budget-rollouts", str(args.budget), "--workers", str(args.workers),
               "--seed", str(seed), "--store", f"sqlite:///{store_file}", "--json"]
    if agent["app_dir"]:
        command += ["--app-dir", agent["app_dir"]]
    first_line: list[float] = []
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)

    def read_stderr() -> None:
        for _line in proc.stderr:
            if not first_line:
                first_line.append(time.monotonic() - started)

    reader = threading.Thread(target=read_stderr)
    reader.start()
    out = proc.stdout.read()
    proc.wait()
    wall = time.monotonic() - started
    reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"gepa-trace optimize exited {proc.returncode}: {out[-500:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    phases = summary["spent"]["phases"]
    split = {"startup": first_line[0], "examples": phases["preflight"]["seconds"],
             "loop": phases["search"]["seconds"], "held_out": phases["held_out"]["seconds"]}
    split["export"] = wall - sum(split.values())
    gate = summary["held_out"]["gate"] or {}
    return {"wall": wall, "split": split, "rollouts": summary["spent"]["all"]["rollouts"],
            "val": summary["best_val_score"], "test": gate.get("best_mean")}


# ----------------------------------------------------------------- gepa's script


def run_gepa(kind: str, store_file: Path, args, seed: int) -> dict:
    started = time.monotonic()
    spec = json.dumps({"kind": kind, "store": f"sqlite:///{store_file}", "seed": seed,
                       "budget": args.budget, "threads": args.workers,
                       "latency_ms": args.latency_ms})
    proc = subprocess.run([sys.executable, __file__, "--gepa-child", spec],
                          check=False, capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"gepa script exited {proc.returncode}: {proc.stderr[-800:]}")
    marks = json.loads(proc.stdout.strip().splitlines()[-1])
    split = {"startup": marks["imported"] - started,
             "examples": marks["loaded"] - marks["imported"],
             "loop": marks["optimized"] - marks["loaded"],
             "held_out": marks["tested"] - marks["optimized"]}
    split["export"] = wall - sum(split.values())
    return {"wall": wall, "split": split, "rollouts": marks["rollouts"], "val": marks["val"],
            "test": marks["test"]}


def gepa_child(spec: dict) -> None:
    """The gepa user's script (run in its own process by ``run_gepa``)."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(APPS))
    from concurrent.futures import ThreadPoolExecutor

    import gepa
    from gepa.core.adapter import EvaluationBatch

    from gepa_trace.lm import LM
    from gepa_trace.optimizer.protocols import Score
    from gepa_trace.prompts import PromptSet
    from gepa_trace.replay.dataset import load_examples
    from gepa_trace.store import open_store

    if spec["kind"] == "demo":
        from gepa_trace.demo import SEED_PROMPTS as seed_prompts
        from gepa_trace.demo import build_agent, metric
    else:
        import people_app as app

        build_agent, metric = app.build_agent, app.metric
        seed_prompts = PromptSet({"picker": app.picker, "replier": app.replier})
    import litellm  # noqa: F401 - what the script's LLM calls need, so startup holds it

    task, reflect = _models(spec["latency_ms"])
    marks = {"imported": time.monotonic()}
    data = load_examples(open_store(spec["store"]), AGENTS[spec["kind"]]["name"],
                         need_signal=False)
    marks["loaded"] = time.monotonic()
    threads = spec["threads"]

    def prompts_of(candidate):
        prompts = seed_prompts
        for component, text in candidate.items():
            prompts = prompts.with_instruction(component, text)
        return prompts

    def run_one(agent, example):
        try:
            output = agent.invoke(dict(example.inputs))
            verdict = Score.checked(metric(example, output, None))
            return output, verdict.score, verdict.feedback
        except Exception as exc:  # noqa: BLE001 - a failed run scores 0, as in gepa's examples
            return None, 0.0, f"error: {exc}"

    def run_batch(prompts, batch):
        agent = build_agent(prompts, model=task)
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda ex: run_one(agent, ex), batch))

    class Adapter:
        propose_new_texts = None

        def evaluate(self, batch, candidate, capture_traces=False):
            results = run_batch(prompts_of(candidate), batch)
            trajectories = None
            if capture_traces:
                trajectories = [{"question": ex.inputs.get("question"), "output": out,
                                 "feedback": fb} for ex, (out, _s, fb) in zip(batch, results)]
            return EvaluationBatch(outputs=[out for out, _s, _f in results],
                                   scores=[s for _o, s, _f in results],
                                   trajectories=trajectories)

        def make_reflective_dataset(self, candidate, eval_batch, components_to_update):
            items = [{"Inputs": str(t["question"]), "Generated Outputs": str(t["output"]),
                      "Feedback": t["feedback"]} for t in eval_batch.trajectories]
            return {component: items for component in components_to_update}

    class Quiet:
        def log(self, *args, **kwargs):
            pass

    result = gepa.optimize(
        seed_candidate={c: seed_prompts.instruction(c) for c in seed_prompts},
        trainset=data.train, valset=data.val, adapter=Adapter(),
        reflection_lm=LM(reflect, role="reflection"), max_metric_calls=spec["budget"],
        seed=spec["seed"], logger=Quiet(), display_progress_bar=False)
    marks["optimized"] = time.monotonic()
    best = prompts_of(result.best_candidate)
    seed_scores = [s for _o, s, _f in run_batch(seed_prompts, data.test)]
    best_scores = [s for _o, s, _f in run_batch(best, data.test)]
    marks["tested"] = time.monotonic()
    marks.update(rollouts=result.total_metric_calls + 2 * len(data.test),
                 val=result.val_aggregate_scores[result.best_idx],
                 test=sum(best_scores) / max(1, len(best_scores)),
                 seed_test=sum(seed_scores) / max(1, len(seed_scores)))
    print(json.dumps(marks))


# ----------------------------------------------------------------- the table


def _mean_split(rows: list[dict]) -> dict:
    return {p: statistics.mean(r["split"][p] for r in rows) for p in PHASES}


def table(results: dict) -> tuple[str, list[str]]:
    lines = [("| agent | command | wall s, mean (per seed) | startup | examples (+ preflight) "
              "| loop | held-out | export + exit | rollouts | val | test |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for kind, by_tool in results.items():
        for tool, rows in by_tool.items():
            walls = [r["wall"] for r in rows]
            split = _mean_split(rows)
            test = [r["test"] for r in rows if r["test"] is not None]
            lines.append(
                f"| {AGENTS[kind]['name']} | {tool} | {statistics.mean(walls):.1f} "
                f"({' / '.join(f'{w:.1f}' for w in walls)}) | "
                + " | ".join(f"{split[p]:.1f}" for p in PHASES)
                + f" | {statistics.mean(r['rollouts'] for r in rows):.0f} "
                f"| {statistics.mean(r['val'] for r in rows):.3f} "
                f"| {statistics.mean(test) if test else float('nan'):.3f} |")
        ours, theirs = by_tool["gepa-trace optimize"], by_tool["gepa script"]
        ratios = [o["wall"] / t["wall"] for o, t in zip(ours, theirs)]
        loop = [o["split"]["loop"] / t["split"]["loop"] for o, t in zip(ours, theirs)]
        bare = [o["wall"] / (t["wall"] - t["split"]["held_out"]) for o, t in zip(ours, theirs)]
        verdicts.append(
            f"{AGENTS[kind]['name']}: whole command {statistics.mean(ratios):.2f}x of gepa's "
            f"script (per seed {' / '.join(f'{r:.2f}' for r in ratios)}; "
            f"{'met' if max(ratios) <= 0.7 else 'NOT met'}, target <= 0.7x on every seed); "
            f"{statistics.mean(bare):.2f}x of gepa's script without its held-out scoring; "
            f"loop alone {statistics.mean(loop):.2f}x")
        for tool, rows in by_tool.items():
            if tool.endswith("(baseline)"):
                before, after = _mean_split(rows), _mean_split(ours)
                verdicts.append(
                    f"{AGENTS[kind]['name']}: this code against the baseline, wall "
                    f"{statistics.mean(r['wall'] for r in rows):.1f} -> "
                    f"{statistics.mean(r['wall'] for r in ours):.1f} s; by phase "
                    + ", ".join(f"{p} {before[p]:.1f} -> {after[p]:.1f}" for p in PHASES))
    return "\n".join(lines), verdicts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gepa-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--agents", default="demo,people")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=8,
                        help="our --workers, and the gepa adapter's threads")
    parser.add_argument("--demo-runs", type=int, default=200,
                        help="recorded production runs of the demo agent")
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="also run the command of this checkout (its .venv; e.g. the "
                             "main branch before a change), interleaved, as its own row")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    if args.gepa_child:
        gepa_child(json.loads(args.gepa_child))
        return 0
    kinds = args.agents.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            print(f"recording {kind} ...", file=sys.stderr, flush=True)
            pristine = Path(tmp) / f"{kind}.db"
            record_store(kind, pristine, args.demo_runs if kind == "demo" else 60,
                         args.latency_ms)
            tools = [("gepa-trace optimize", run_ours), ("gepa script", run_gepa)]
            if args.baseline:
                tools.insert(1, (f"gepa-trace optimize of {args.baseline} (baseline)",
                                 lambda *a: run_ours(*a, code=args.baseline)))
            results[kind] = {tool: [] for tool, _run in tools}
            for seed in seeds:
                for i, (tool, run) in enumerate(tools):
                    copy = Path(tmp) / f"{kind}-{seed}-{i}.db"
                    shutil.copy(pristine, copy)
                    print(f"{kind} seed {seed}: {tool} ...", file=sys.stderr, flush=True)
                    row = run(kind, copy, args, seed)
                    print(f"  {row['wall']:.1f}s " + " ".join(
                        f"{p} {row['split'][p]:.1f}" for p in PHASES), file=sys.stderr,
                        flush=True)
                    results[kind][tool].append(row)
    text, verdicts = table(results)
    print(text)
    for v in verdicts:
        print(v)
    if not args.no_write:
        from importlib.metadata import version

        from results import write_section  # bench/results.py, beside this file

        heading = "Whole optimize command vs gepa (bench/bench_command.py)"
        command = "bench/bench_command.py " + " ".join(argv or sys.argv[1:])
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = (
            f"## {heading}\n\n`.venv/bin/python {command.strip()}` on {when}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, gepa "
            f"{version('gepa')}. Each command timed from process start to exit, runs "
            f"interleaved (ours, then gepa's script, per seed), each on a fresh copy of the "
            f"store. {args.latency_ms:g} ms per simulated LLM call, budget {args.budget} "
            f"rollouts, our --workers {args.workers} and gepa's adapter on {args.workers} "
            f"threads, seeds {args.seeds}"
            + (f"; the baseline row runs the command of {args.baseline} (its own .venv)" if args.baseline else "")
            + f". gepa's script also scores the seed and its best "
            f"on the held-out test (what our command does; gepa alone has no such step). "
            f"The machine was shared with other jobs: differences under ~10% are noise."
            f"\n\n{text}\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")
        write_section(heading, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
