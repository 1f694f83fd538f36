"""Components and prompts: each component's versions with their text and production
figures (``prompts.production``), diffs between versions (``report.diff``), aliases, and
promotion through the same checks as `gepa-trace prompts promote` / `export --promote`:
the run's held-out gate verdict and the review's flags, behind a confirmation that needs
an explicit approval when something is flagged (``prompts.registry.promote``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gepa_trace.errors import ConfigError, GateRefused
from gepa_trace.ui.app import mutating, ui_of


def components_page(request: Request) -> Response:
    from gepa_trace.cli.common import parse_since
    from gepa_trace.cli.traces import _template_lines as template_lines
    from gepa_trace.prompts.production import version_figures
    from gepa_trace.prompts.registry import list_versions
    from gepa_trace.store.components import list_components
    from gepa_trace.store.run_search import agents_with_runs

    ui, q = ui_of(request), request.query_params
    agent = q.get("agent") or None
    since = q.get("since") or "14d"  # what `gepa-trace versions` reads by default
    found = list_components(ui.store, agent=agent, include_candidates=True)
    try:
        since_s = parse_since(since)
    except click.BadParameter as exc:
        raise ConfigError(exc.message) from None
    figures = {(f.component, f.version): f
               for f in version_figures(ui.store, agent, since=since_s)}
    stored = {(v.component, v.version): v for v in list_versions(ui.store)}
    return ui.page(request, "components.html", components=found, figures=figures,
                   stored=stored, agent=agent or "", since=since, agents=agents_with_runs(ui.store),
                   text_of=lambda template: "\n".join(template_lines(template)))


def diff_page(request: Request) -> Response:
    from gepa_trace.prompts.registry import get_version
    from gepa_trace.report.diff import change_summary, side_by_side

    ui, q = ui_of(request), request.query_params
    a, b = q.get("a") or "", q.get("b") or ""
    if not a or not b:
        raise ConfigError("a diff needs two versions: ?a=VERSION&b=VERSION")
    old, new = get_version(ui.store, a), get_version(ui.store, b)
    # side_by_side escapes every line it places (report.diff), so its table is markup
    table = Markup(side_by_side(old.text(), new.text(), f"{old.component}@{old.version}",
                                f"{new.component}@{new.version}"))
    return ui.page(request, "diff.html", old=old, new=new, table=table,
                   summary=change_summary(old.text(), new.text()))


def prompts_page(request: Request) -> Response:
    from gepa_trace.prompts.registry import alias_history, list_versions

    ui = ui_of(request)
    by_component: dict[str, list[Any]] = {}
    for v in list_versions(ui.store):
        by_component.setdefault(v.component, []).append(v)
    return ui.page(request, "prompts.html", by_component=by_component,
                   changes=alias_history(ui.store)[::-1][:200],  # newest first
                   promoted=request.query_params.get("promoted"))


@dataclass(frozen=True)
class Verdict:
    """What the export gate and the review say about promoting one version."""

    gate: Any  # GateResult | None
    gate_needed: bool  # a version an optimization made: the held-out gate applies
    flags: list[Any]
    approved: bool  # an approval recorded before covers this version
    is_best: bool

    @property
    def gate_passes(self) -> bool:
        """The gate speaks for the run's best candidate against its seed (what `export`
        ships); any other version of the run has no verdict of its own."""
        return not self.gate_needed or (self.is_best and self.gate is not None
                                        and self.gate.significant)


def verdict_of(store: Any, stored: Any) -> tuple[Verdict, Any]:
    """The gate's verdict and the review's flags of ``stored``, as `export` reads them;
    and the run's review (None for a version no optimization made)."""
    from gepa_trace.prompts.export import held_out_gate
    from gepa_trace.prompts.review import Allow, is_approved, review_run
    from gepa_trace.replay.runs import describe_run

    if stored.run_id is None or stored.origin != "optimization":
        return Verdict(None, False, [], False, False), None
    review = review_run(store, stored.run_id, allow=Allow.load())
    best = (describe_run(store, stored.run_id).get("best") or {}).get("prompts") or {}
    return Verdict(gate=held_out_gate(store, stored.run_id), gate_needed=True,
                   flags=review.flags_of_version(stored.component, stored.version),
                   approved=is_approved(store, stored.run_id, stored.component,
                                        stored.version),
                   is_best=best.get(stored.component) == stored.version), review


def confirm_page(request: Request) -> Response:
    from gepa_trace.prompts.registry import get_version, list_versions
    from gepa_trace.report.diff import side_by_side

    ui, p = ui_of(request), request.path_params
    stored = get_version(ui.store, p["version"], p["component"])
    alias = request.query_params.get("alias") or "production"
    verdict, _review = verdict_of(ui.store, stored)
    current = next((v for v in list_versions(ui.store, component=stored.component)
                    if alias in v.aliases), None)
    table = None
    if current is not None and current.version != stored.version:
        table = Markup(side_by_side(current.text(), stored.text(),
                                    f"{alias}: {current.version}", stored.version))
    return ui.page(request, "promote.html", stored=stored, alias=alias, verdict=verdict,
                   current=current, table=table)


def promote(request: Request, form: Any) -> Response:
    """`prompts promote COMPONENT VERSION --alias ALIAS [--approve]`, plus the held-out
    gate of `export` for a version an optimization made (``force``: promote anyway)."""
    from gepa_trace.prompts.registry import get_version
    from gepa_trace.prompts.registry import promote as point_alias

    ui = ui_of(request)
    component = form.get("component") or ""
    alias = (form.get("alias") or "production").strip()
    stored = get_version(ui.store, form.get("version") or "", component)
    verdict, review = verdict_of(ui.store, stored)
    if not verdict.gate_passes and form.get("force") != "1":
        why = ("not the run's best candidate, which the gate judged" if not verdict.is_best
               else verdict.gate.sentence() if verdict.gate else "no held-out test evaluation")
        raise GateRefused(f"promote refused: {why}; tick 'promote anyway' to override")
    found = point_alias(ui.store, component, stored.version, alias=alias,
                        approve=form.get("approve") == "1", review=review,
                        actor=ui.settings.who, reason="promoted in the web UI")
    return RedirectResponse(f"/prompts?promoted={component}:{alias}:{found.version}",
                            status_code=303)


def revert_page(request: Request) -> Response:
    """The confirmation of a roll-back: undo one recorded alias change."""
    from gepa_trace.prompts.registry import get_change

    ui = ui_of(request)
    change = get_change(ui.store, int(request.path_params["change_id"]))
    return ui.page(request, "revert.html", change=change)


def revert(request: Request, form: Any) -> Response:
    """`prompts revert CHANGE_ID`: the alias goes back where it was before the change
    (removed if it was not set), recorded as a new change by the UI's user."""
    from gepa_trace.prompts.registry import revert_change

    ui = ui_of(request)
    try:
        change_id = int(form.get("change") or "")
    except ValueError:
        raise ConfigError("which alias change to roll back? (change=ID)") from None
    change = revert_change(ui.store, change_id, actor=ui.settings.who,
                           approve=form.get("approve") == "1")
    return RedirectResponse(f"/prompts?promoted={change.component}:{change.alias}:"
                            f"{change.previous or '(removed)'}", status_code=303)


def pages() -> list[Route]:
    return [Route("/components", components_page), Route("/components/diff", diff_page),
            Route("/prompts", prompts_page),
            Route("/prompts/{component}/{version}/promote", confirm_page),
            Route("/prompts/changes/{change_id:int}/revert", revert_page)]


def actions() -> list[Route]:
    return [Route("/prompts/promote", mutating(promote), methods=["POST"]),
            Route("/prompts/revert", mutating(revert), methods=["POST"])]
