"""Production traffic for the canary and nightly-policy tests: the demo agent served to
simulated users, each run's prompts loaded through ``gt.load_prompts`` with a canary."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

import gepa_trace as gt
from gepa_trace.demo import AGENT_NAME, BEST_PROMPTS, SEED_PROMPTS, build_agent, metric
from gepa_trace.demo.traffic import traffic_questions
from gepa_trace.prompts import PromptSet
from gepa_trace.prompts.registry import promote, record_versions


def as_agents(prompts: PromptSet) -> PromptSet:
    return PromptSet({n: prompts.version_of(n) for n in prompts}, agent=AGENT_NAME)


def set_alias(store, prompts: PromptSet, alias: str) -> None:
    record_versions(store, prompts, origin="file")
    for name in prompts:
        promote(store, name, prompts.version_of(name).version, alias=alias)


def serve(url: str, users: int, seed: int, fraction: float, tmp_path,
          rated: float = 0.7) -> dict[str, str]:
    """One run per user, each loading its prompts through the canary just before it
    runs, on 4 threads; users give a thumbs up or down on ``rated`` of the runs. Returns the
    alias each trace's root span recorded, by trace id."""
    from opentelemetry import trace as trace_api

    inst = gt.instrument(store=url, service_name=AGENT_NAME)
    agents = {json.dumps(p.versions(), sort_keys=True): build_agent(p)
              for p in (SEED_PROMPTS, BEST_PROMPTS)}

    def one(i: int, example) -> tuple[str, object, object]:
        user = f"user-{seed}-{i}"
        prompts = gt.load_prompts("production", url, agent=AGENT_NAME, canary="candidate",
                                  fraction=fraction, key=user,
                                  fallback=tmp_path / "prompts.production.json")
        agent = agents[json.dumps(prompts.versions(), sort_keys=True)]
        with gt.agent_run(AGENT_NAME, inputs=dict(example.inputs)) as run:
            trace_api.get_current_span().set_attribute("user.id", user)
            output = agent.invoke(dict(example.inputs))
            run.set_outputs(output)
        return run.trace_id, example, output

    rng = random.Random(seed)
    with ThreadPoolExecutor(4) as pool:  # each worker thread routes its own runs
        done = list(pool.map(one, range(users), traffic_questions(users, seed=seed)))
    inst.force_flush()
    for trace_id, example, output in done:
        if rng.random() < rated:
            gt.record_feedback(trace_id, score=metric(example, output).score, source="user",
                               store=url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT trace_id, attributes FROM spans WHERE parent_span_id IS NULL")).all()
    engine.dispose()
    return {t: json.loads(a).get("gepa.prompt.alias") for t, a in rows}


