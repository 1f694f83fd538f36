"""Issue 22, acceptance 3: the whole `gepa-trace optimize` command against the `gepa` package.

Both are timed as a user's shell runs them: a fresh process, from its start to its exit.
Ours is ``gepa-trace optimize`` on a store of recorded production runs (agent replay,
the replay cache, the preflight, the held-out test, the run's totals). Theirs is a
script a gepa user would write for the same job (bench/gepa_script.py): import, read the
same examples from the same store (our ``load_examples``: the same train / validation /
test split), run ``gepa.optimize`` with a ``GEPAAdapter`` that runs a batch on 8
threads, then score the seed and the best candidate on the held-out test with 8 threads. Same agent, same
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
import json
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
GEPA_SCRIPT = ROOT / "bench" / "gepa_script.py"
PHASES = ("startup", "examples", "loop", "held_out", "export")

#: The worlds, in the shape of bench/gepa_script.py; ``traffic``: records production runs
#: (``traffic(n, store=, seed=, feedback_rate=, model=, threads=)``; ``feedback_rate``
#: default 0.5).
AGENTS = {
    "demo": {"agent": "demo-qa", "entrypoint": "gepa_trace.demo:build_agent",
             "metric": "gepa_trace.demo:metric", "seed_prompts": "gepa_trace.demo:SEED_PROMPTS",
             "traffic": "gepa_trace.demo.traffic:run_traffic", "app_dir": None},
    "people": {"agent": "people-desk", "entrypoint": "people_app:build_agent",
               "metric": "people_app:metric",
               "seed_prompts": {"picker": "people_app:picker", "replier": "people_app:replier"},
               "traffic": "bench_command:people_traffic", "app_dir": str(APPS),
               "feedback_rate": 1.0},  # its metric reads the expected answer from feedback
}


def _models(latency_ms: float) -> tuple[str, str]:
    return (f"gepa-sim/task?latency_ms={latency_ms:g}",
            f"gepa-sim/reflect?latency_ms={latency_ms:g}")


# ----------------------------------------------------------------- the recorded store


def record_store(world: dict, path: Path, runs: int, task: str, *, seed: int = 0) -> str:
    """A SQLite store of ``world``'s production runs with feedback (its ``traffic`` in a
    process of its own), recorded with the task model the optimization replays (so the
    replay cache can answer its calls)."""
    url = f"sqlite:///{path}"
    paths = [str(ROOT / "bench")] + ([world["app_dir"]] if world["app_dir"] else [])
    module, _, function = world["traffic"].partition(":")
    code = _RECORD.format(paths=paths, module=module, function=function, url=url, task=task,
                          runs=runs, seed=seed,
                          feedback_rate=world.get("feedback_rate", 0.5))
    # run beside the store: a working directory of this checkout would put its gepa_trace
    # before the installed one (or PYTHONPATH's)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=path.parent)
    return url


_RECORD = """
import sys
sys.path[:0] = {paths!r}
from {module} import {function} as traffic
from gepa_trace.collectors.instrument import active_instrumentation
traffic({runs}, store={url!r}, seed={seed}, feedback_rate={feedback_rate}, model={task!r},
        threads=8)
active_instrumentation().shutdown()
"""


def people_traffic(n: int, *, store: str, seed: int = 0, feedback_rate: float = 1.0,
                   model: str = "gepa-sim/task", threads: int = 8) -> None:
    """people-desk's production runs: its first ``n`` questions, and a user's feedback on
    a ``feedback_rate`` share of them (picked by ``seed``): a thumbs up on a right answer,
    a thumbs down with the right answer in words on a wrong one."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    import people_app as app

    import gepa_trace as gt

    inst = gt.instrument(store=store, service_name=app.AGENT)
    agent = app.build_agent(gt.PromptSet({"picker": app.picker, "replier": app.replier}),
                            model=model)

    def one(question):
        with gt.agent_run(app.AGENT, inputs={"question": question}) as run:
            out = agent.invoke({"question": question})
            run.set_outputs(out)
        return run.trace_id, question, out

    with ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(one, app.QUESTIONS[:n]))
    inst.force_flush()
    rng = random.Random(f"people-traffic:{seed}")
    for trace_id, question, out in done:
        if rng.random() >= feedback_rate:
            continue
        right = app.ANSWERS[question]
        if out.strip().rstrip(".") == right:
            gt.record_feedback(trace_id, score=1.0)
        else:
            gt.record_feedback(trace_id, score=0.0, comment=f"the answer should be {right}")


# ----------------------------------------------------------------- our command


def run_ours(kind: str, store_file: Path, args, seed: int, code: str | None = None) -> dict:
    """``gepa-trace optimize``; ``code``: a checkout whose own ``.venv`` (an editable
    install of it) to run instead."""
    agent = AGENTS[kind]
    task, reflect = _models(args.latency_ms)
    bin_dir = Path(code) / ".venv" / "bin" if code else Path(sys.executable).parent
    command = [str(bin_dir / "gepa-trace"), "optimize",
               "--agent", agent["agent"], "--entrypoint", agent["entrypoint"],
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
    """The gepa user's script (bench/gepa_script.py), in a process of its own."""
    task, reflect = _models(args.latency_ms)
    started = time.monotonic()
    spec = json.dumps({"world": AGENTS[kind], "store": f"sqlite:///{store_file}",
                       "seed": seed, "budget": args.budget, "threads": args.workers,
                       "task": task, "reflect": reflect})
    proc = subprocess.run([sys.executable, str(GEPA_SCRIPT), spec],
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
                f"| {AGENTS[kind]['agent']} | {tool} | {statistics.mean(walls):.1f} "
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
            f"{AGENTS[kind]['agent']}: whole command {statistics.mean(ratios):.2f}x of gepa's "
            f"script (per seed {' / '.join(f'{r:.2f}' for r in ratios)}; "
            f"{'met' if max(ratios) <= 0.7 else 'NOT met'}, target <= 0.7x on every seed); "
            f"{statistics.mean(bare):.2f}x of gepa's script without its held-out scoring; "
            f"loop alone {statistics.mean(loop):.2f}x")
        for tool, rows in by_tool.items():
            if tool.endswith("(baseline)"):
                before, after = _mean_split(rows), _mean_split(ours)
                verdicts.append(
                    f"{AGENTS[kind]['agent']}: this code against the baseline, wall "
                    f"{statistics.mean(r['wall'] for r in rows):.1f} -> "
                    f"{statistics.mean(r['wall'] for r in ours):.1f} s; by phase "
                    + ", ".join(f"{p} {before[p]:.1f} -> {after[p]:.1f}" for p in PHASES))
    return "\n".join(lines), verdicts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    kinds = args.agents.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            print(f"recording {kind} ...", file=sys.stderr, flush=True)
            pristine = Path(tmp) / f"{kind}.db"
            record_store(AGENTS[kind], pristine, args.demo_runs if kind == "demo" else 60,
                         _models(args.latency_ms)[0])
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
        from results import measured_with, write_section  # bench/results.py, beside this

        heading = "Whole optimize command vs gepa (bench/bench_command.py)"
        section = (
            f"## {heading}\n\n{measured_with('bench_command.py', argv)}. Each command timed "
            f"from process start to exit, runs interleaved (ours, then gepa's script, per "
            f"seed), each on a fresh copy of the store. {args.latency_ms:g} ms per simulated "
            f"LLM call, budget {args.budget} rollouts, our --workers {args.workers} and "
            f"gepa's adapter on {args.workers} threads, seeds {args.seeds}"
            + (f"; the baseline row runs the command of {args.baseline} (its own .venv)"
               if args.baseline else "")
            + f". gepa's script also scores the seed and its best "
            f"on the held-out test (what our command does; gepa alone has no such step). "
            f"The machine was shared with other jobs: differences under ~10% are noise."
            f"\n\n{text}\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")
        write_section(heading, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
