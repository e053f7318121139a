"""One standalone HTML page with a timeline per violated property of a queue simulation run.

``render_violation_report`` draws, for each ``QueueViolation``, the client requests and
commits it involves on an SVG timeline in virtual seconds. Each client gets a lane, and the
commit chain gets one below them. Involved requests and commits are red, other requests
that overlap the same window are grey, and a red vertical line marks where the violation
shows. The page embeds everything it needs (no scripts, fonts or style sheets from
elsewhere).

Violations name what they involve in ``QueueViolation.involved`` as text: requests start
with ``#<op_id>`` and commits with ``commit seq <sequence> at t=<time>``. Those are
parsed here, so a violation whose items follow neither form gets a timeline of the whole
run with its commits.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from osqueue.sim.queue_checks import QueueOutcome, QueueViolation
from osqueue.sim.queue_world import QueueOp, QueueRun

REPORT_NAME = "violations.html"

_OP_PATTERN = re.compile(r"^#(\d+) ")
_COMMIT_PATTERN = re.compile(r"^commit seq (\d+) at t=([0-9.]+)")

WIDTH = 1100
LABEL_WIDTH = 90
LANE_HEIGHT = 20
MAX_CONTEXT_OPS = 60
"""Maximum grey requests drawn around the involved ones, so the timeline stays readable."""


@dataclass(frozen=True, slots=True)
class _Involved:
    op_ids: frozenset[int]
    commit_sequences: frozenset[int]


def _parse_involved(violation: QueueViolation) -> _Involved:
    op_ids: set[int] = set()
    sequences: set[int] = set()
    for item in violation.involved:
        op_match = _OP_PATTERN.match(item)
        if op_match:
            op_ids.add(int(op_match.group(1)))
        commit_match = _COMMIT_PATTERN.match(item)
        if commit_match:
            sequences.add(int(commit_match.group(1)))
    return _Involved(frozenset(op_ids), frozenset(sequences))


def _op_end(op: QueueOp, fallback: float) -> float:
    ends = [time for time in (op.returned_at, op.effect_at) if time is not None]
    return max(ends) if ends else fallback


def _window(run: QueueRun, ops: Sequence[QueueOp], commit_times: Sequence[float]
            ) -> tuple[float, float]:
    """Return the virtual time range to draw: the involved items plus a margin."""

    times = [op.called_at for op in ops]
    times += [_op_end(op, op.called_at) for op in ops]
    times += list(commit_times)
    if not times:
        return 0.0, max(run.virtual_duration, 1e-3)
    start, end = min(times), max(times)
    margin = max(0.5, 0.1 * (end - start))
    return max(0.0, start - margin), end + margin


def _marker_time(ops: Sequence[QueueOp], commit_times: Sequence[float]) -> float | None:
    """Return where the violation shows: the last involved commit, else the last request end."""

    if commit_times:
        return max(commit_times)
    if ops:
        return max(_op_end(op, op.called_at) for op in ops)
    return None


def _render_timeline(run: QueueRun, violation: QueueViolation) -> str:
    involved = _parse_involved(violation)
    by_id = {op.op_id: op for op in run.ops}
    involved_ops = [by_id[op_id] for op_id in sorted(involved.op_ids) if op_id in by_id]
    chain_times = {commit.state.sequence: commit.applied_at for commit in run.commits}
    involved_commit_times = [chain_times[sequence] for sequence in sorted(
        involved.commit_sequences) if sequence in chain_times]
    start, end = _window(run, involved_ops, involved_commit_times)
    span = end - start or 1e-3

    context = [op for op in run.ops if op.op_id not in involved.op_ids
               and op.called_at <= end and _op_end(op, end) >= start][:MAX_CONTEXT_OPS]
    drawn = sorted(involved_ops + context, key=lambda op: (op.called_at, op.op_id))
    clients = sorted({op.client for op in drawn})
    lanes = {client: index for index, client in enumerate(clients)}
    chain_lane = len(clients)
    height = (len(clients) + 2) * LANE_HEIGHT + 24

    def x_of(time: float) -> float:
        clamped = min(max(time, start), end)
        return LABEL_WIDTH + (clamped - start) / span * (WIDTH - LABEL_WIDTH - 10)

    svg_open = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
                'font-family="monospace" font-size="11">')
    parts = [svg_open]
    for client, lane in lanes.items():
        y = lane * LANE_HEIGHT + 14
        parts.append(f'<text x="2" y="{y}">{html.escape(client)}</text>')
    parts.append(f'<text x="2" y="{chain_lane * LANE_HEIGHT + 14}">commits</text>')

    for op in drawn:
        red = op.op_id in involved.op_ids
        y = lanes[op.client] * LANE_HEIGHT + 3
        left = x_of(op.called_at)
        finished = op.returned_at is not None or op.effect_at is not None
        right = max(left + 2, x_of(_op_end(op, end)))
        style = ('fill="#f4c7c3" stroke="#c5221f" stroke-width="2"' if red
                 else 'fill="#e8eaed" stroke="#9aa0a6"')
        dash = "" if finished else ' stroke-dasharray="4 2"'
        parts.append(
            f'<g><title>{html.escape(op.describe())}</title>'
            f'<rect x="{left:.1f}" y="{y}" width="{right - left:.1f}" height="{LANE_HEIGHT - 6}" '
            f'{style}{dash}/><text x="{left + 2:.1f}" y="{y + 11}">#{op.op_id}</text></g>')

    chain_y = chain_lane * LANE_HEIGHT + 3
    for commit in run.commits:
        if not start <= commit.applied_at <= end:
            continue
        red = commit.state.sequence in involved.commit_sequences
        x = x_of(commit.applied_at)
        color = "#c5221f" if red else "#5f6368"
        parts.append(
            f'<g><title>commit seq {commit.state.sequence} at t={commit.applied_at:.4f}</title>'
            f'<line x1="{x:.1f}" y1="{chain_y}" x2="{x:.1f}" y2="{chain_y + LANE_HEIGHT - 6}" '
            f'stroke="{color}" stroke-width="{3 if red else 1}"/></g>')

    marker = _marker_time(involved_ops, involved_commit_times)
    if marker is not None:
        x = x_of(marker)
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{chain_y + LANE_HEIGHT}" '
                     'stroke="#c5221f" stroke-dasharray="6 3"/>')
        parts.append(f'<text x="{min(x + 3, WIDTH - 150):.1f}" y="{chain_y + LANE_HEIGHT + 10}" '
                     'fill="#c5221f">'
                     f'{html.escape(violation.property)} at t={marker:.3f}</text>')
    parts.append(f'<text x="{LABEL_WIDTH}" y="{height - 4}">t={start:.3f} s</text>')
    parts.append(f'<text x="{WIDTH - 90}" y="{height - 4}">t={end:.3f} s</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_violation_report(run: QueueRun, outcome: QueueOutcome, replay: str) -> str:
    """Return the HTML page with one section and timeline per violation of ``outcome``."""

    config = run.config
    title = f"osqueue queue simulation: {config.scenario.name} seed {config.seed}"
    sections = []
    for number, violation in enumerate(outcome.violations, start=1):
        items = "".join(f"<li><code>{html.escape(item)}</code></li>"
                        for item in violation.involved)
        extra = ""
        if violation.property in ("queue-linearizable", "store-linearizable"):
            # The checker's own report shows the search and the partial linearization.
            name = "queue-report.html" if violation.property.startswith("queue") \
                else "store-report.html"
            extra = f'<p>Checker report: <a href="{name}">{name}</a></p>'
        if not violation.involved:
            extra += "<p>No single request or commit is named; the whole run is drawn.</p>"
        sections.append(
            f'<section id="v{number}"><h2>{number}. <span class="property">'
            f'{html.escape(violation.property)}</span></h2>'
            f"<p>{html.escape(violation.message)}</p>{extra}"
            f"{_render_timeline(run, violation)}<ul>{items}</ul></section>")

    index = "".join(
        f'<li><a href="#v{number}">{html.escape(violation.property)}</a></li>'
        for number, violation in enumerate(outcome.violations, start=1))
    body = "".join(sections) or "<p>Every property held.</p>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1em}section{margin-bottom:2em}"
        ".property{color:#c5221f}code{font-size:0.85em}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Violated: {html.escape(', '.join(outcome.violated()) or 'none')}. "
        f"Replay: <code>{html.escape(replay)}</code></p>"
        f"<p>Schedule: {html.escape(config.schedule.describe())}</p>"
        "<p>Red bars are the requests a violation involves and red ticks its commits; grey "
        "bars are other requests in the same window, dashed where no response came. Times are "
        "virtual seconds.</p>"
        f"<ol>{index}</ol>{body}</body></html>\n"
    )


__all__ = ["REPORT_NAME", "render_violation_report"]
