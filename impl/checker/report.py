"""Reports of a check: a plain-text summary and a standalone HTML timeline.

The HTML page draws each part of the history as an SVG timeline, one row per client and
one bar per operation from its invocation to its completion. Time is drawn by rank (the
n-th distinct event time sits at the n-th tick), so bursts of short operations stay
readable. The page embeds its styles and uses no scripts, fonts or other external files.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from osqueue.checker.types import UNKNOWN, CheckResult, Model, Operation, PartitionResult, Verdict

_ROW_HEIGHT = 34
_BAR_HEIGHT = 22
_TICK_WIDTH = 40
_LABEL_WIDTH = 110
_MAX_TICKS_WIDTH = 14000
_MAX_LISTED = 60
"""Longest prefix shown step by step in the text summary; longer ones show their end."""


def _describe(model: Model, op: Operation) -> str:
    return model.describe_operation(op.input, UNKNOWN if op.return_ is None else op.output)


def _op_label(number: int, op: Operation) -> str:
    label = f"#{number}"
    if op.op_id is not None:
        label += f" (id {op.op_id})"
    return label


def replay(model: Model, operations: Sequence[Operation], order: Sequence[int]) -> list[Any]:
    """Return the model state after each operation of ``order``, applied in turn."""

    state = model.init()
    states = []
    for number in order:
        op = operations[number]
        output = UNKNOWN if op.return_ is None else op.output
        _, state = model.step(state, op.input, output)
        states.append(state)
    return states


def _shown_parts(result: CheckResult) -> list[PartitionResult]:
    """Return the parts a report details: the failing and undecided ones, else all."""

    notable = [part for part in result.partitions if part.verdict is not Verdict.LINEARIZABLE]
    return notable or list(result.partitions)


def part_name(part: PartitionResult, operations: Sequence[Operation], model: Model) -> str:
    """Return "part N", followed by what the part holds when the model can name it."""

    name = f"part {part.index}"
    if model.describe_part is not None and part.operations:
        name += f" ({model.describe_part(operations[part.operations[0]])})"
    return name


def parts_overview(result: CheckResult) -> str | None:
    """Explain what a part is and how many passing parts a report leaves out.

    Returns None for a history checked as one part, where there is nothing to explain.
    """

    total = len(result.partitions)
    if total <= 1:
        return None
    hidden = total - len(_shown_parts(result)) if result.verdict is not Verdict.LINEARIZABLE else 0
    text = (
        f"The history was split into {total} parts: independent sub-histories, for example "
        "the operations on one key, each checked alone. It is linearizable exactly when every "
        "part is."
    )
    if hidden:
        text += f" {hidden} linearizable part(s) are not shown."
    return text


def summarize(
    result: CheckResult,
    operations: Sequence[Operation],
    model: Model,
    *,
    headline: bool = True,
) -> str:
    """Return a plain-text account of ``result``: verdict, and for each failing part the
    end of the longest linearization and the operations that could not follow it.

    ``headline=False`` leaves out the first line (verdict, counts and budget), for callers
    that print those themselves.
    """

    lines = []
    if headline:
        lines.append(
            f"{result.verdict.value} ({model.name}, {len(operations)} operations, "
            f"{len(result.partitions)} part(s), {result.elapsed:.3f} s, {result.steps} steps)"
        )
        if result.budget_exhausted:
            lines.append("the time or step budget ran out before the search finished")
    if result.verdict is Verdict.LINEARIZABLE:
        return "\n".join(lines)

    overview = parts_overview(result)
    if overview is not None:
        lines.append(overview)
    for part in _shown_parts(result):
        lines.append("")
        lines.append(
            f"{part_name(part, operations, model)}: {part.verdict.value}, "
            f"{len(part.operations)} operations"
        )
        order = part.linearization
        states = replay(model, operations, order)
        first = max(0, len(order) - _MAX_LISTED)
        lines.append(
            f"  longest linearization found: {len(order)} of {len(part.operations)} operations"
        )
        if first:
            lines.append(f"  ... {first} earlier operations")
        for position in range(first, len(order)):
            number = order[position]
            op = operations[number]
            lines.append(
                f"  {position + 1:4}. {_op_label(number, op)} client {op.client_id}: "
                f"{_describe(model, op)}  => {model.describe_state(states[position])}"
            )
        if part.violating:
            lines.append("  cannot be linearized next:")
            for number in part.violating:
                op = operations[number]
                lines.append(
                    f"    {_op_label(number, op)} client {op.client_id}: {_describe(model, op)}"
                )
    return "\n".join(lines)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; }
.verdict { display: inline-block; padding: 0.2em 0.6em; border-radius: 4px; color: #fff; }
.linearizable { background: #2e7d32; }
.not-linearizable { background: #c62828; }
.unknown { background: #ef6c00; }
.timeline { overflow-x: auto; border: 1px solid #ddd; margin: 0.5em 0 1em; }
svg text { font-family: ui-monospace, monospace; font-size: 11px; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left;
         font-family: ui-monospace, monospace; }
tr.violating td { background: #ffebee; }
.legend span { display: inline-block; padding: 0 0.5em; margin-right: 0.5em;
               border: 1px solid #999; }
"""

_LEGEND = (
    '<p class="legend"><span style="background:#81c784">in the longest linearization '
    '(number = position)</span><span style="background:#e53935">cannot be linearized '
    'next</span><span style="background:#bdbdbd">not linearized</span> dashed outline: '
    "completion never observed. Hover over a bar for details.</p>"
)

_FILL = {
    "violating": "#e53935",
    "linearized": "#81c784",
    "open": "#bdbdbd",
}


def _bar_kind(number: int, part: PartitionResult, order_index: dict[int, int]) -> str:
    if number in part.violating:
        return "violating"
    if number in order_index:
        return "linearized"
    return "open"


def _timeline_svg(part: PartitionResult, operations: Sequence[Operation], model: Model) -> str:
    """Return the SVG timeline of one part."""

    members = list(part.operations)
    times = sorted(
        {operations[n].call for n in members}
        | {operations[n].return_ for n in members if operations[n].return_ is not None}
    )
    rank = {time: index for index, time in enumerate(times)}
    end_rank = len(times) + 1
    tick = max(4.0, min(_TICK_WIDTH, _MAX_TICKS_WIDTH / max(end_rank, 1)))

    clients: list[Any] = []
    for number in sorted(members, key=lambda n: operations[n].call):
        if operations[number].client_id not in clients:
            clients.append(operations[number].client_id)
    row_of = {client: row for row, client in enumerate(clients)}

    order_index = {number: position for position, number in enumerate(part.linearization)}
    width = _LABEL_WIDTH + (end_rank + 1) * tick + 10
    height = len(clients) * _ROW_HEIGHT + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}">']

    for client, row in row_of.items():
        y = 10 + row * _ROW_HEIGHT
        out.append(
            f'<text x="4" y="{y + _BAR_HEIGHT * 0.7:.0f}">client {html.escape(str(client))}</text>'
        )
        out.append(
            f'<line x1="{_LABEL_WIDTH}" y1="{y + _BAR_HEIGHT / 2}" x2="{width - 10:.0f}" '
            f'y2="{y + _BAR_HEIGHT / 2}" stroke="#eee"/>'
        )

    for number in members:
        op = operations[number]
        kind = _bar_kind(number, part, order_index)
        x1 = _LABEL_WIDTH + rank[op.call] * tick
        x2 = _LABEL_WIDTH + (end_rank if op.return_ is None else rank[op.return_] + 1) * tick - 2
        y = 10 + row_of[op.client_id] * _ROW_HEIGHT
        description = _describe(model, op)
        tooltip = [
            f"{_op_label(number, op)} client {op.client_id}: {description}",
            f"invoked at {op.call}, "
            + ("completion never observed" if op.return_ is None else f"completed at {op.return_}"),
        ]
        if number in order_index:
            tooltip.append(f"position {order_index[number] + 1} in the longest linearization")
        if kind == "violating":
            tooltip.append("cannot be linearized after the longest linearization")

        dash = ' stroke-dasharray="4 3"' if op.return_ is None else ""
        out.append("<g>")
        out.append(f"<title>{html.escape(chr(10).join(tooltip))}</title>")
        out.append(
            f'<rect x="{x1:.1f}" y="{y}" width="{max(x2 - x1, 3):.1f}" height="{_BAR_HEIGHT}" '
            f'rx="3" fill="{_FILL[kind]}" stroke="#555"{dash}/>'
        )
        label = description
        if number in order_index:
            label = f"{order_index[number] + 1}: {label}"
        max_chars = max(0, int((x2 - x1) / 6.6) - 1)
        if max_chars >= 3:
            if len(label) > max_chars:
                label = label[: max_chars - 1] + "\u2026"
            text_y = y + _BAR_HEIGHT * 0.68
            out.append(f'<text x="{x1 + 3:.1f}" y="{text_y:.0f}">{html.escape(label)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _steps_table(part: PartitionResult, operations: Sequence[Operation], model: Model) -> str:
    order = part.linearization
    states = replay(model, operations, order)
    rows = [
        (
            "<table><tr><th>step</th><th>operation</th><th>client</th><th>description</th>"
            "<th>state after</th></tr>"
        )
    ]
    for position, number in enumerate(order):
        op = operations[number]
        rows.append(
            f"<tr><td>{position + 1}</td><td>{html.escape(_op_label(number, op))}</td>"
            f"<td>{html.escape(str(op.client_id))}</td><td>{html.escape(_describe(model, op))}</td>"
            f"<td>{html.escape(model.describe_state(states[position]))}</td></tr>"
        )
    for number in part.violating:
        op = operations[number]
        rows.append(
            f'<tr class="violating"><td>next?</td><td>{html.escape(_op_label(number, op))}</td>'
            f"<td>{html.escape(str(op.client_id))}</td><td>{html.escape(_describe(model, op))}</td>"
            "<td>cannot be linearized here</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _part_section(part: PartitionResult, operations: Sequence[Operation], model: Model) -> str:
    name = part_name(part, operations, model)
    heading = (
        f"{name[0].upper()}{name[1:]}: {part.verdict.value}, {len(part.operations)} operations, "
        f"{part.states} states, {part.elapsed * 1000:.1f} ms"
    )
    body = [f"<h2>{html.escape(heading)}</h2>"]
    if part.verdict is Verdict.NOT_LINEARIZABLE:
        body.append(
            f"<p>The longest linearization found covers {len(part.linearization)} of "
            f"{len(part.operations)} operations. None of the red operations can come next: "
            "the first of them had completed by then, so it had to take effect.</p>"
        )
    elif part.verdict is Verdict.UNKNOWN:
        body.append("<p>The budget ran out before the search decided this part.</p>")
    body.append(f'<div class="timeline">{_timeline_svg(part, operations, model)}</div>')
    body.append(_steps_table(part, operations, model))
    return "\n".join(body)


def render_html(result: CheckResult, operations: Sequence[Operation], model: Model) -> str:
    """Return a standalone HTML page with the timeline of each failing or undecided part.

    When the history is linearizable, every part is drawn with its linearization. When some
    part failed or is undecided, the parts that passed are left out.
    """

    css_class = result.verdict.value.replace(" ", "-")
    summary = (
        f"{model.name}, {len(operations)} operations in {len(result.partitions)} "
        f"part(s), checked in {result.elapsed:.3f} s, {result.steps} search steps"
    )
    if result.budget_exhausted:
        summary += "; the time or step budget ran out"
    overview = parts_overview(result)
    if overview is not None:
        summary += f". {overview}"
    sections = [_part_section(part, operations, model) for part in _shown_parts(result)]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            "<title>Linearizability check: " + html.escape(result.verdict.value) + "</title>",
            f"<style>{_STYLE}</style></head><body>",
            (
                f'<h1>Linearizability check: <span class="verdict {css_class}">'
                f"{html.escape(result.verdict.value)}</span></h1>"
            ),
            f"<p>{html.escape(summary)}</p>",
            _LEGEND,
            *sections,
            "</body></html>",
        ]
    )
