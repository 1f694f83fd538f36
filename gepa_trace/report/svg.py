"""The report's charts as inline SVG strings, drawn in Python (no JavaScript, no fonts or
images from anywhere). Every text that reaches the SVG goes through ``esc``.

Colours come from CSS classes defined in ``html.py`` so the charts follow the page.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

ORIGIN_CLASS = {"seed": "o-seed", "reflection": "o-refl", "merge": "o-merge",
                "warm_start": "o-warm"}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (about ``count`` of them)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high - low <= 1e-9 * max(1.0, abs(low)):  # one value: give it a unit-wide frame
        high = low + 1.0
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == int(value):
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass
class Axes:
    """A plot area and the linear maps from data to pixels."""

    width: int
    height: int
    x_ticks: list[float]
    y_ticks: list[float]
    left: int = 56
    right: int = 16
    top: int = 16
    bottom: int = 44

    def x(self, value: float) -> float:
        lo, hi = self.x_ticks[0], self.x_ticks[-1]
        span = (hi - lo) or 1.0
        return self.left + (value - lo) / span * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        lo, hi = self.y_ticks[0], self.y_ticks[-1]
        span = (hi - lo) or 1.0
        return self.height - self.bottom - (value - lo) / span * (
            self.height - self.top - self.bottom)

    def frame(self, x_label: str, y_label: str) -> list[str]:
        out = []
        for tick in self.y_ticks:
            y = self.y(tick)
            out.append(f'<line class="grid" x1="{self.left}" x2="{self.width - self.right}" '
                       f'y1="{y:.1f}" y2="{y:.1f}"/>')
            out.append(f'<text class="tick" x="{self.left - 6}" y="{y + 4:.1f}" '
                       f'text-anchor="end">{esc(_fmt(tick))}</text>')
        for tick in self.x_ticks:
            x = self.x(tick)
            base = self.height - self.bottom
            out.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{base}" '
                       f'y2="{base + 4}"/>')
            out.append(f'<text class="tick" x="{x:.1f}" y="{base + 17}" '
                       f'text-anchor="middle">{esc(_fmt(tick))}</text>')
        base = self.height - self.bottom
        out.append(f'<line class="axis" x1="{self.left}" x2="{self.width - self.right}" '
                   f'y1="{base}" y2="{base}"/>')
        out.append(f'<line class="axis" x1="{self.left}" x2="{self.left}" y1="{self.top}" '
                   f'y2="{base}"/>')
        out.append(f'<text class="label" x="{(self.left + self.width - self.right) / 2:.0f}" '
                   f'y="{self.height - 6}" text-anchor="middle">{esc(x_label)}</text>')
        mid = (self.top + base) / 2
        out.append(f'<text class="label" transform="translate(14 {mid:.0f}) rotate(-90)" '
                   f'text-anchor="middle">{esc(y_label)}</text>')
        return out


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    # No xmlns: inline SVG in HTML does not need one, and the page carries no URL at all.
    return (f'<svg class="chart" viewBox="0 0 {width} '
            f'{height}" width="{width}" height="{height}" role="img" aria-label="{esc(title)}">'
            f'<title>{esc(title)}</title>' + "".join(body) + "</svg>")


def _score_range(values: Sequence[float]) -> tuple[float, float]:
    """Scores are usually in [0, 1]; keep that frame unless the data leave it."""
    low = min([0.0, *values])
    high = max([1.0, *values])
    return low, high


@dataclass(frozen=True)
class ScorePoint:
    rollouts: int
    score: float
    candidate_id: int
    origin: str
    best: bool = False


def score_chart(points: Sequence[ScorePoint], best_steps: Sequence[tuple[int, float]],
                total_rollouts: int, width: int = 1100, height: int = 320,
                growths: Sequence[tuple[int, int]] = ()) -> str:
    """Validation score of each scored candidate at the rollout count it was scored at,
    with the best-so-far as a step line running to ``total_rollouts``; a dashed line
    where validation grew, labelled with its new size."""
    x_max = max([total_rollouts, 1, *(p.rollouts for p in points)])
    low, high = _score_range([p.score for p in points] + [s for _r, s in best_steps])
    axes = Axes(width, height, nice_ticks(0, x_max), nice_ticks(low, high))
    body = axes.frame("rollouts spent", "validation score (mean)")
    for rollouts, size in growths:
        x = axes.x(rollouts)
        body.append(f'<line class="grown" x1="{x:.1f}" x2="{x:.1f}" y1="{axes.top}" '
                    f'y2="{axes.height - axes.bottom}"><title>validation grew to {size} '
                    f'examples after {rollouts} rollouts</title></line>')
        body.append(f'<text class="pt-label" x="{x + 4:.1f}" y="{axes.top + 12}">'
                    f'val {size}</text>')
    if best_steps:
        coords = []
        for i, (rollouts, score) in enumerate(best_steps):
            if i:
                coords.append(f"{axes.x(rollouts):.1f},{axes.y(best_steps[i - 1][1]):.1f}")
            coords.append(f"{axes.x(rollouts):.1f},{axes.y(score):.1f}")
        coords.append(f"{axes.x(x_max):.1f},{axes.y(best_steps[-1][1]):.1f}")
        body.append(f'<polyline class="best-line" points="{" ".join(coords)}"/>')
    for p in points:
        cls = ORIGIN_CLASS.get(p.origin, "o-refl") + (" is-best" if p.best else "")
        r = 6 if p.best else 4.5
        body.append(f'<circle class="pt {cls}" cx="{axes.x(p.rollouts):.1f}" '
                    f'cy="{axes.y(p.score):.1f}" r="{r}"><title>candidate #{p.candidate_id} '
                    f'({esc(p.origin)}): {p.score:.3f} after {p.rollouts} rollouts'
                    f'</title></circle>')
    return _svg(width, height, body, "validation score versus rollouts")


@dataclass(frozen=True)
class FrontDot:
    label: str
    chars: int
    score: float
    on_front: bool
    detail: str


def front_chart(dots: Sequence[FrontDot], width: int = 360, height: int = 240) -> str:
    """One component's versions: mean validation score against prompt length; front
    members filled and joined by the front line (shorter and better is up-left)."""
    chars = [d.chars for d in dots] or [0]
    span = max(chars) - min(chars)
    pad = max(10.0, span * 0.1)
    x_ticks = nice_ticks(max(0.0, min(chars) - pad), max(chars) + pad, 4)
    low, high = _score_range([d.score for d in dots])
    axes = Axes(width, height, x_ticks, nice_ticks(low, high, 4), left=48)
    body = axes.frame("prompt length (characters)", "score")
    front = sorted((d for d in dots if d.on_front), key=lambda d: (d.chars, -d.score))
    if len(front) > 1:
        pts = " ".join(f"{axes.x(d.chars):.1f},{axes.y(d.score):.1f}" for d in front)
        body.append(f'<polyline class="front-line" points="{pts}"/>')
    for d in sorted(dots, key=lambda d: d.on_front):
        cls = "front-pt" if d.on_front else "off-pt"
        body.append(f'<circle class="{cls}" cx="{axes.x(d.chars):.1f}" cy="{axes.y(d.score):.1f}" '
                    f'r="{6 if d.on_front else 4.5}"><title>{esc(d.detail)}</title></circle>')
        if d.on_front:
            body.append(f'<text class="pt-label" x="{axes.x(d.chars) + 8:.1f}" '
                        f'y="{axes.y(d.score) - 7:.1f}">{esc(d.label)}</text>')
    return _svg(width, height, body, "Pareto front: score against prompt length")


@dataclass(frozen=True)
class LineageNode:
    id: int
    parents: tuple[int, ...]
    origin: str
    label: str
    detail: str
    best: bool
    on_best_path: bool


def lineage_chart(nodes: Sequence[LineageNode], col: int = 180, row: int = 58) -> str:
    """The accepted candidates as a layered graph: a node's column is its depth (longest
    parent chain), parent -> child edges; the best candidate's ancestry is highlighted."""
    by_id = {n.id: n for n in nodes}
    depth: dict[int, int] = {}

    def depth_of(node_id: int) -> int:
        if node_id not in depth:
            parents = [p for p in by_id[node_id].parents if p in by_id and p < node_id]
            depth[node_id] = 1 + max((depth_of(p) for p in parents), default=-1)
        return depth[node_id]

    for n in sorted(nodes, key=lambda n: n.id):
        depth_of(n.id)
    columns: dict[int, list[int]] = {}
    for n in sorted(nodes, key=lambda n: n.id):
        columns.setdefault(depth[n.id], []).append(n.id)
    pos: dict[int, tuple[float, float]] = {}
    for d, ids in columns.items():
        for i, node_id in enumerate(ids):
            pos[node_id] = (20 + d * col, 20 + i * row)
    box_w, box_h = col - 30, 40
    width = 40 + (max(columns, default=0) + 1) * col - 30
    height = 40 + max((len(ids) for ids in columns.values()), default=1) * row - (row - box_h)
    body = []
    for n in nodes:
        for p in n.parents:
            if p not in pos:
                continue
            (px, py), (cx, cy) = pos[p], pos[n.id]
            hot = n.on_best_path and by_id[p].on_best_path
            x1, y1, x2, y2 = px + box_w, py + box_h / 2, cx, cy + box_h / 2
            mid = (x1 + x2) / 2
            body.append(f'<path class="edge{" hot" if hot else ""}" d="M{x1:.0f},{y1:.0f} '
                        f'C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"/>')
    for n in nodes:
        x, y = pos[n.id]
        cls = ORIGIN_CLASS.get(n.origin, "o-refl")
        extra = " best" if n.best else (" path" if n.on_best_path else "")
        body.append(f'<g class="node {cls}{extra}"><title>{esc(n.detail)}</title>'
                    f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="7"/>'
                    f'<text class="n1" x="{x + 8}" y="{y + 16}">#{n.id} {esc(n.origin)}</text>'
                    f'<text class="n2" x="{x + 8}" y="{y + 32}">{esc(n.label)}</text></g>')
    return _svg(max(width, 200), max(height, 60), body, "lineage of accepted candidates")
