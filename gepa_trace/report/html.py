"""The report page: one self-contained HTML document built from ``ReportData``.

The page is the Jinja2 template ``templates/report.html`` around ``run_report.html``
(the run's header and sections), the same template the web UI's run page places
(``gepa_trace.ui``): one report design. The sections' HTML is built here.

No URL appears in the page (no CDN, no web font, no image link); styles are inline and
the charts are inline SVG from ``svg.py``. Every string read from the store is escaped
with ``esc`` before it is placed, since prompts and diagnoses contain ``<``, ``>``, ``&``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from gepa_trace.optimizer.config import OPTIMISTIC_VAL, val_is_optimistic
from gepa_trace.optimizer.state import UNJUDGED
from gepa_trace.report.blame import TITLE as BLAME_TITLE
from gepa_trace.report.blame import blame_section
from gepa_trace.report.data import ReportData
from gepa_trace.report.diff import change_summary, side_by_side
from gepa_trace.report.review import review_section_body
from gepa_trace.report.svg import (
    FrontDot,
    LineageNode,
    ScorePoint,
    esc,
    front_chart,
    lineage_chart,
    score_chart,
)

SECTIONS = (
    ("summary", "Summary"),
    ("score-vs-rollouts", "Score versus rollouts"),
    ("fronts", "Pareto fronts"),
    ("lineage", "Lineage"),
    ("diffs", "Seed → best prompts"),
    ("review", "Flagged changes"),
    ("blame", BLAME_TITLE),
    ("diagnoses", "Diagnoses"),
    ("budget", "Budget spent"),
    ("significance", "Held-out significance"),
)

CSS = """
:root { --fg:#1d2330; --muted:#5d6678; --line:#dde1ea; --bg:#f6f7fa; --card:#fff;
  --accent:#3b5bdb; --good:#2b8a3e; --bad:#c92a2a; --warn:#e67700;
  --seed:#868e96; --refl:#3b5bdb; --merge:#ae3ec9; --warm:#0c8599; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font:14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header.top { background:#1d2330; color:#fff; padding:22px 32px 18px; }
header.top h1 { margin:0 0 6px; font-size:22px; font-weight:600; }
header.top .meta { color:#c5cbd8; display:flex; flex-wrap:wrap; gap:6px 22px; }
header.top .meta b { color:#fff; font-weight:600; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px;
  font-weight:600; background:#e9ecef; color:#343a40; }
.badge.finished, .badge.accepted, .badge.yes { background:#d3f9d8; color:#2b8a3e; }
.badge.stopped, .badge.running { background:#fff3bf; color:#8f5800; }
.badge.failed, .badge.rejected, .badge.no { background:#ffe3e3; color:#c92a2a; }
.badge.sim { background:#ffd8a8; color:#7a3d00; }
nav { padding:8px 32px; background:#fff; border-bottom:1px solid var(--line);
  position:sticky; top:0; z-index:2; display:flex; flex-wrap:wrap; gap:4px 16px; }
nav a { color:var(--accent); text-decoration:none; font-size:13px; }
main { max-width:1180px; margin:0 auto; padding:20px 32px 48px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px;
  padding:18px 22px; margin:0 0 18px; }
section h2 { margin:0 0 4px; font-size:17px; }
p.note { color:var(--muted); margin:2px 0 12px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 14px; background:#fbfcfe; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:22px; font-weight:600; }
.card .s { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:12px; color:var(--muted); font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
code, .mono, pre { font-family:ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size:12.5px; }
pre { white-space:pre-wrap; word-break:break-word; margin:4px 0; background:#f8f9fb;
  border:1px solid var(--line); border-radius:6px; padding:8px 10px; }
.chart { max-width:100%; height:auto; display:block; }
.chart .grid { stroke:#edf0f5; } .chart .axis { stroke:#9aa3b5; }
.chart text { fill:var(--muted); font-size:11px; } .chart .label { font-size:12px; fill:var(--fg); }
.chart .best-line { fill:none; stroke:var(--good); stroke-width:2.2; }
.chart .grown { stroke:var(--muted); stroke-dasharray:3 4; }
.chart .pt { stroke:#fff; stroke-width:1.2; fill-opacity:.9; }
.chart .o-seed { fill:var(--seed); } .chart .o-refl { fill:var(--refl); }
.chart .o-merge { fill:var(--merge); } .chart .o-warm { fill:var(--warm); }
.chart .pt.is-best { stroke:var(--good); stroke-width:2.5; }
.chart .front-line { fill:none; stroke:var(--accent); stroke-dasharray:4 3; stroke-width:1.5; }
.chart .front-pt { fill:var(--accent); stroke:#fff; stroke-width:1.5; }
.chart .off-pt { fill:#ced4da; stroke:#fff; }
.chart .pt-label { fill:var(--fg); font-size:10.5px; }
.chart .edge { fill:none; stroke:#b8c0cc; stroke-width:1.4; }
.chart .edge.hot { stroke:var(--good); stroke-width:2.4; }
.chart .node rect { fill:#fff; stroke:#b8c0cc; stroke-width:1.2; }
.chart .node.o-seed rect { stroke:var(--seed); } .chart .node.o-refl rect { stroke:var(--refl); }
.chart .node.o-merge rect { stroke:var(--merge); } .chart .node.o-warm rect { stroke:var(--warm); }
.chart .node.path rect { fill:#ebfbee; } .chart .node.best rect { fill:#d3f9d8; stroke:var(--good); stroke-width:2.4; }
.chart .node text { fill:var(--fg); } .chart .node .n1 { font-weight:600; font-size:11.5px; }
.chart .node .n2 { font-size:10.5px; fill:var(--muted); }
.legend { display:flex; flex-wrap:wrap; gap:4px 16px; color:var(--muted); font-size:12px; margin:6px 0; }
.legend i { display:inline-block; width:10px; height:10px; border-radius:50%; margin-right:5px; vertical-align:-1px; }
.fronts { display:grid; grid-template-columns:repeat(auto-fill,minmax(320px,1fr)); gap:16px; }
.fronts h3, .diffblock h3 { margin:0 0 4px; font-size:14px; }
.scroll { overflow-x:auto; }
table.diff { table-layout:fixed; font-family:ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size:12px; }
table.diff td { border:none; padding:1px 6px; white-space:pre-wrap; word-break:break-word; }
table.diff col.ln { width:38px; } table.diff col.txt { width:calc(50% - 38px); }
table.diff td.ln { color:#adb5bd; text-align:right; user-select:none; }
table.diff tr.chg td.l, table.diff tr.del td.l { background:#fff5f5; }
table.diff tr.chg td.r, table.diff tr.ins td.r { background:#ebfbee; }
del { background:#ffc9c9; color:#8b1a1a; text-decoration:line-through; }
ins { background:#b2f2bb; color:#1b5e20; text-decoration:none; }
.diffblock { margin:0 0 18px; }
ol.diag { list-style:none; margin:0; padding:0; }
ol.diag > li { border-left:3px solid var(--line); padding:6px 12px; margin:0 0 10px; }
ol.diag > li.accepted { border-color:var(--good); } ol.diag > li.rejected { border-color:var(--bad); }
ol.diag > li.failed { border-color:var(--warn); }
/* long diagnoses scroll inside their box, so the list stays readable as a list */
ol.diag pre { max-height:9.5em; overflow:auto; }
.diag .head { display:flex; flex-wrap:wrap; gap:4px 12px; align-items:baseline; }
.diag .head .muted, .muted { color:var(--muted); }
.verdict { font-size:16px; font-weight:600; margin:6px 0; }
.verdict.yes { color:var(--good); } .verdict.no { color:var(--bad); }
footer { color:var(--muted); font-size:12px; text-align:center; padding:0 0 24px; }
"""


def _when(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "—"
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _sum(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def _card(key: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="k">{esc(key)}</div><div class="v">{esc(value)}</div>'
            f'<div class="s">{esc(sub)}</div></div>')


def _section(anchor: str, body: str, note: str = "") -> str:
    title = dict(SECTIONS)[anchor]
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{note_html}{body}</section>'


def _header(d: ReportData) -> str:
    run = d.run
    sim = (' <span class="badge sim" title="numbers from the offline simulated models">'
           'simulated models (gepa-sim)</span>') if d.simulated else ""
    elapsed = None
    if run.finished_at is not None:
        elapsed = run.finished_at - run.started_at
    models = ", ".join(d.models) if d.models else "not recorded"
    meta = [
        f"<span>run <b class=\"mono\">{esc(run.id)}</b></span>",
        f"<span>status <span class=\"badge {esc(run.status)}\">{esc(run.status)}</span></span>",
        f"<span>stop reason <b>{esc(run.stop_reason or '—')}</b></span>",
        f"<span>started <b>{esc(_when(run.started_at))}</b></span>",
        f"<span>finished <b>{esc(_when(run.finished_at))}</b> ({esc(_duration(elapsed))})</span>",
        f"<span>models <b>{esc(models)}</b></span>",
    ]
    if run.warm_start_from:
        meta.append(f"<span>warm start from <b class=\"mono\">{esc(run.warm_start_from)}</b></span>")
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in SECTIONS)
    return (f'<header class="top"><h1>GEPA optimization of <span class="mono">'
            f'{esc(run.agent)}</span>{sim}</h1><div class="meta">{"".join(meta)}</div>'
            f'</header><nav>{nav}</nav>')


def _summary(d: ReportData) -> str:
    seed, best = d.candidate(d.seed_id), d.candidate(d.best_id)
    statuses = [c.status for c in d.candidates if c.origin not in ("seed", "warm_start")]
    gain = (best.val_score - seed.val_score
            if best and seed and best.val_score is not None and seed.val_score is not None
            else None)
    held_out = (f"{d.gate.gain:+.3f}" if d.gate else "not measured")
    cards = [
        _card("seed validation", _score(seed.val_score if seed else None),
              f"candidate #{seed.id}" if seed else ""),
        _card("best validation", _score(best.val_score if best else None),
              (f"candidate #{best.id}" + (f", {gain:+.3f} over the seed" if gain is not None
                                           else "")) if best else ""),
        _card("held-out gain", held_out,
              "significant" if d.gate and d.gate.significant
              else ("not significant" if d.gate else "")),
        _card("candidates", str(len(statuses)),
              f"{statuses.count('accepted')} accepted, {statuses.count('rejected')} rejected"),
        _card("rollouts", f"{d.spent['all']['rollouts']:,}",
              f"{d.run.iteration} iterations"),
        _card("cost", f"${d.spent['all']['cost_usd']:.4f}",
              _duration(d.spent["all"]["seconds"])),
    ]
    return _section("summary", f'<div class="cards">{"".join(cards)}</div>')


_LEGEND = ('<div class="legend"><span><i style="background:var(--seed)"></i>seed</span>'
           '<span><i style="background:var(--refl)"></i>reflection</span>'
           '<span><i style="background:var(--merge)"></i>merge</span>'
           '<span><i style="background:var(--warm)"></i>warm start</span>{extra}</div>')


def _score_section(d: ReportData) -> str:
    points = [ScorePoint(c.scored_at, c.val_score, c.id, c.origin, c.id == d.best_id)
              for c in d.candidates if c.val_score is not None and c.scored_at is not None]
    if not points:
        return _section("score-vs-rollouts", "<p>No candidate has a validation score yet.</p>")
    chart = score_chart(points, [(r, s) for r, s, _c in d.history],
                        int(d.totals.get("rollouts") or d.rollouts), growths=d.growths)
    extra = ('<span><i style="background:var(--good);border-radius:0;height:3px">'
             '</i>best so far</span>')
    note = ("Each dot is a candidate's mean validation score, placed at the number of "
            "rollouts the run had spent when its validation finished.")
    if val_is_optimistic(d.config):
        note += f" {OPTIMISTIC_VAL[0].upper()}{OPTIMISTIC_VAL[1:]}."
    if d.growths:
        note += (" Dashed lines: the best candidate solved every validation example, so "
                 "validation grew by training examples (to the size shown) and the "
                 "solved candidates were scored on them; the others left the pool.")
    return _section("score-vs-rollouts",
                    _LEGEND.format(extra=extra) + f'<div class="scroll">{chart}</div>', note)


def _fronts_section(d: ReportData) -> str:
    blocks = []
    for component in d.components:
        points = d.fronts.get(component, [])
        if not points:
            blocks.append(f"<div><h3>{esc(component)}</h3><p class=\"muted\">no validated "
                          "versions</p></div>")
            continue
        dots = [FrontDot(p.version[:7], p.chars, p.mean, p.on_front,
                         f"{p.version} · {p.chars} chars · score {p.mean:.3f} · candidates "
                         + ", ".join(f"#{i}" for i in p.candidate_ids)) for p in points]
        rows = "".join(
            f'<tr><td class="mono">{esc(p.version[:12])}</td><td class="num">{p.mean:.3f}</td>'
            f'<td class="num">{p.chars}</td><td>{esc(", ".join(f"#{i}" for i in p.candidate_ids))}'
            f'</td></tr>' for p in sorted(points, key=lambda p: -p.mean) if p.on_front)
        changes = d.front_changes.get(component, 0)
        blocks.append(
            f'<div><h3 class="mono">{esc(component)}</h3>'
            f'<p class="note">{len(points)} versions validated, '
            f'{sum(p.on_front for p in points)} on the front; the front changed {changes} '
            f'time{"s" if changes != 1 else ""}.</p>{front_chart(dots)}'
            f'<table><thead><tr><th>front version</th><th class="num">score</th>'
            f'<th class="num">chars</th><th>used by</th></tr></thead><tbody>{rows}</tbody>'
            f'</table></div>')
    note = ("Per component: every validated version, its score (per example, the best of "
            "any candidate using it, then the mean) against its length. Filled dots are the "
            "front the engine kept; parents are sampled from it.")
    return _section("fronts", f'<div class="fronts">{"".join(blocks)}</div>', note)


def _lineage_section(d: ReportData) -> str:
    accepted = [c for c in d.candidates if c.status == "accepted"]
    if not accepted:
        return _section("lineage", "<p>No accepted candidates.</p>")
    by_id = {c.id: c for c in d.candidates}
    path: set[int] = set()
    stack = [d.best_id] if d.best_id is not None else []
    while stack:
        cid = stack.pop()
        if cid in by_id and cid not in path:
            path.add(cid)
            stack.extend(by_id[cid].parents)
    nodes = []
    for c in accepted:
        component = c.component or ""
        if len(component) > 20:  # the box is narrow; the full name is in the tooltip
            component = component[:19] + "…"
        label = " · ".join(x for x in (component, _score(c.val_score)) if x)
        detail = (f"#{c.id} {c.origin}, iteration {c.iteration}, parents "
                  f"{', '.join(f'#{p}' for p in c.parents) or 'none'}, component "
                  f"{c.component or '—'}, validation {_score(c.val_score)}")
        nodes.append(LineageNode(c.id, c.parents, c.origin, label, detail, c.id == d.best_id,
                                 c.id in path))
    rows = "".join(
        f'<tr><td class="num">#{c.id}</td><td>{esc(c.origin)}</td>'
        f'<td class="mono">{esc(c.component or "—")}</td>'
        f'<td>{esc(", ".join(f"#{p}" for p in c.parents) or "—")}</td>'
        f'<td class="num">{c.iteration}</td><td class="num">{_score(c.val_score)}</td>'
        f'<td>{"best" if c.id == d.best_id else ("ancestor of best" if c.id in path else "")}'
        f'</td></tr>' for c in accepted)
    table = ('<table><thead><tr><th class="num">id</th><th>origin</th><th>component</th>'
             '<th>parents</th><th class="num">iteration</th><th class="num">validation</th>'
             f'<th></th></tr></thead><tbody>{rows}</tbody></table>')
    note = ("Accepted candidates, each placed right of its parents. The best candidate and "
            "its ancestry are green.")
    return _section("lineage", _LEGEND.format(extra="")
                    + f'<div class="scroll">{lineage_chart(nodes)}</div>{table}', note)


def _diffs_section(d: ReportData) -> str:
    if not d.diffs:
        return _section("diffs", "<p>No seed and best candidate to compare.</p>")
    blocks = []
    for diff in d.diffs:
        if diff.seed_version == diff.best_version:
            blocks.append(f'<div class="diffblock"><h3 class="mono">{esc(diff.component)}</h3>'
                          f'<p class="muted">unchanged (version {esc(diff.seed_version)})</p>'
                          f'<pre>{esc(diff.seed_text)}</pre></div>')
            continue
        table = side_by_side(diff.seed_text, diff.best_text, f"seed {diff.seed_version}",
                             f"best {diff.best_version}")
        blocks.append(f'<div class="diffblock"><h3 class="mono">{esc(diff.component)}</h3>'
                      f'<p class="note">{esc(change_summary(diff.seed_text, diff.best_text))}'
                      f'</p><div class="scroll">{table}</div></div>')
    note = (f"The seed candidate (#{d.seed_id}) against the best (#{d.best_id}), per "
            "component; removed words on the left, added words on the right.")
    return _section("diffs", "".join(blocks), note)


def _diagnoses_section(d: ReportData) -> str:
    entries: list[tuple[int, int, str]] = []
    for c in d.candidates:
        if c.origin in ("seed", "warm_start") or c.status in UNJUDGED:
            continue
        status = c.status
        sums = (f"minibatch {_sum(c.minibatch_parent_sum)} → {_sum(c.minibatch_child_sum)}"
                if c.minibatch_parent_sum is not None or c.minibatch_child_sum is not None
                else "")
        parts = [f'<span class="badge {esc(status)}">{esc(status)}</span>',
                 f"<b>iteration {c.iteration}</b>",
                 f'<span class="mono">{esc(c.component or c.origin)}</span>',
                 (f'<span class="muted">#{c.id} ({esc(c.origin)}) from '
                  f'{esc(", ".join(f"#{p}" for p in c.parents))}</span>')]
        if sums:
            parts.append(f"<span>{esc(sums)}</span>")
        if c.val_score is not None:
            parts.append(f"<span>validation {_score(c.val_score)}</span>")
        body = f'<div class="head" id="diag-{c.id}">{"".join(parts)}</div>'
        if c.reason:
            body += f'<div class="muted">{esc(c.reason)}</div>'
        if c.diagnosis:
            body += f"<pre>{esc(c.diagnosis)}</pre>"
        elif c.origin == "merge":
            body += '<div class="muted">merge of two lineages (no reflection)</div>'
        entries.append((c.iteration, c.id, f'<li class="{esc(status)}">{body}</li>'))
    for i, f in enumerate(d.failed):
        head = (f'<div class="head"><span class="badge no">failed</span>'
                f'<b>iteration {esc(f.iteration if f.iteration is not None else "?")}</b>'
                f'<span class="muted">from #{esc(f.parent)} · {esc(f.kind)}</span></div>')
        entries.append((f.iteration if f.iteration is not None else 0, 10**9 + i,
                        f'<li class="failed">{head}<div class="muted">{esc(f.reason)}</div></li>'))
    if not entries:
        return _section("diagnoses", "<p>No reflection has run yet.</p>")
    entries.sort(key=lambda e: (e[0], e[1]))
    skipped = (f" {d.skipped} iterations were skipped because the parent was already "
               "perfect on its minibatch." if d.skipped else "")
    superseded = (f" {d.superseded} proposals made ahead (lookahead) were never judged, "
                  "because an earlier child was accepted, the parent they guessed was not "
                  "picked, or the run stopped first, and are not listed."
                  if d.superseded else "")
    note = ("What the reflection LM said was wrong, in the order it was asked, and whether "
            "the child beat its parent on the same minibatch (sums of scores)." + skipped
            + superseded)
    return _section("diagnoses", f'<ol class="diag">{"".join(e[2] for e in entries)}</ol>',
                    esc(note))


def _limit(limits: dict[str, Any], key: str) -> str:
    value = limits.get(key)
    return "" if value is None else f"{value:g}"


def _budget_section(d: ReportData) -> str:
    """What the command spent, by phase and in all (``d.spent``, the numbers `runs show`
    and `optimize` print), against the budget's limits, which cover the whole command."""
    t, spent = d.totals, d.spent
    limits = (t.get("budget") or {}).get("limits") or {}
    names = [n for n in ("preflight", "search", "held_out") if n in spent["phases"]]
    columns = [(n.replace("_", "-"), spent["phases"][n]) for n in names]
    if spent.get("complete"):
        columns.append(("all", spent["all"]))
    roles = sorted({r for _n, p in columns for r in p["llm_calls_by_role"]})

    def row(label: str, cell, limit: str = "") -> str:
        cells = "".join(f'<td class="num">{esc(cell(p))}</td>' for _n, p in columns)
        return (f"<tr><td>{esc(label)}</td>{cells}"
                f'<td class="num">{esc(limit)}</td></tr>')

    rows = [row("rollouts (evaluator calls)", lambda p: f"{p['rollouts']:,}",
                _limit(limits, "max_rollouts")),
            row("failed rollouts", lambda p: f"{p['errors']:,}"),
            row("replay cache hits (LLM calls served from the store)",
                lambda p: f"{p['replay_cache_hits']:,}")]
    rows += [row(f"LLM calls: {role}",
                 lambda p, role=role: f"{p['llm_calls_by_role'].get(role, 0):,}")
             for role in roles]
    rows += [row("LLM calls: total", lambda p: f"{p['llm_calls']:,}",
                 _limit(limits, "max_llm_calls")),
             row("tokens", lambda p: f"{p['tokens']:,}", _limit(limits, "max_tokens")),
             row("dollars", lambda p: f"${p['cost_usd']:.4f}", _limit(limits, "max_cost_usd")),
             row("wall time", lambda p: _duration(p["seconds"]),
                 _duration(limits["max_seconds"]) if limits.get("max_seconds") else "")]
    head = "".join(f'<th class="num">{esc(n)}</th>' for n, _p in columns)
    table = (f"<table><thead><tr><th></th>{head}<th class=\"num\">budget limit</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>")
    loop = [("evaluation cache hits (pairs not re-run)", t.get("evaluation_cache_hits", 0)),
            ("rollout retries", t.get("rollout_retries", 0)),
            ("reflection errors", t.get("reflection_errors", 0))]
    table += ("<table><tbody>" + "".join(
        f'<tr><td>{esc(k)}</td><td class="num">{int(v or 0):,}</td></tr>' for k, v in loop)
        + "</tbody></table>")
    note = ("What the command spent: the preflight (one seed rollout, one call to each "
            "model), the search, the held-out test, and all." if spent.get("complete") else
            "The search only: per-phase totals are stored when the command finishes.")
    if t.get("first_error"):
        note += f" First failed rollout: {t['first_error']}."
    return _section("budget", table, esc(note))


def _significance_section(d: ReportData) -> str:
    g = d.gate
    if g is None:
        return _section("significance", f'<p class="verdict">{esc(d.gate_note)}</p>'
                        '<p class="note">Held-out test evaluations of the seed and the best '
                        'candidate are written by <code>gepa-trace export</code> and the demo.'
                        '</p>')
    verdict = ("significant: the lower bound of the gain is above zero" if g.significant
               else "not significant: the interval includes zero or less")
    rows = [("held-out examples (paired)", str(g.n)), ("seed mean", f"{g.seed_mean:.3f}"),
            ("best mean", f"{g.best_mean:.3f}"), ("gain", f"{g.gain:+.3f}"),
            (f"{g.confidence:.0%} interval", f"[{g.ci_low:+.3f}, {g.ci_high:+.3f}]"),
            ("bootstrap resamples", f"{g.resamples:,}")]
    body = "".join(f"<tr><td>{esc(k)}</td><td class=\"num\">{esc(v)}</td></tr>" for k, v in rows)
    cls = "yes" if g.significant else "no"
    return _section("significance",
                    f'<p class="verdict {cls}">{esc(verdict)}</p><p>{esc(g.sentence())}</p>'
                    f'<table><tbody>{body}</tbody></table>',
                    f"Paired bootstrap of best − seed on held-out test examples "
                    f"(candidates #{d.seed_id} and #{d.best_id}).")


def report_parts(d: ReportData) -> tuple[str, list[str]]:
    """The report's header and its sections (HTML, every stored string escaped): the
    static page below and the web UI's run page (``gepa_trace.ui``) place the same ones."""
    sections = [_summary(d), _score_section(d), _fronts_section(d), _lineage_section(d),
                _diffs_section(d), _section("review", *review_section_body(d.review)),
                blame_section(d.blames, d.run.id), _diagnoses_section(d),
                _budget_section(d), _significance_section(d)]
    return _header(d), sections


TEMPLATES = Path(__file__).parent / "templates"


def environment(*extra_folders: Path) -> jinja2.Environment:
    """The Jinja2 environment of the report's templates (autoescaped), with the
    templates of ``extra_folders`` first: the web UI adds its own."""
    loader = jinja2.FileSystemLoader([*extra_folders, TEMPLATES])
    return jinja2.Environment(loader=loader, autoescape=True, trim_blocks=True,
                              lstrip_blocks=True)


def render_page(d: ReportData) -> str:
    """The whole HTML document of one run's report (``templates/report.html``)."""
    header, sections = report_parts(d)
    return environment().get_template("report.html").render(
        title=f"gepa-trace report: {d.run.agent} {d.run.id}", css=Markup(CSS),
        header=Markup(header), sections=[Markup(s) for s in sections],
        generated=_when(_now())) + "\n"


def _now() -> float:
    import time

    return time.time()
