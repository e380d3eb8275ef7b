"""The report's timelines (predict --segments): one strip per video, coloured by the label of each stretch of
windows (grey where it is `unknown`), its times and labels in a tooltip, and a legend of the colours.

A row carries its video's stretches under `TIMELINE` (made in the pipeline by `events.timeline_blocks`: at most
`events.TIMELINE_BLOCKS` of them however long the video), as (start s, end s, label, mean confidence).
"""

from __future__ import annotations

import html
from typing import Mapping, Sequence

TIMELINE = "timeline"  # a labels.csv row's key for its video's timeline (predict --segments), not a CSV column
UNKNOWN_COLOUR = "#d9d9d9"


def escape(value) -> str:
    """`value` as HTML text or attribute value."""
    return html.escape(str(value), quote=True)


def percent(p: float) -> str:
    return f"{100 * p:.1f}%"


def label_colours(labels: Sequence[str]) -> dict[str, str]:
    """A distinct colour per label (hues spread by the golden angle, in vocabulary order); `unknown` is grey."""
    return {label: f"hsl({(137.508 * i) % 360:.0f}, 60%, 55%)" for i, label in enumerate(labels)}


def clock(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute}:{second:02d}"


def timeline_html(blocks: Sequence[Sequence], colours: Mapping[str, str], unknown_label: str) -> str:
    end = max(float(blocks[-1][1]), 1e-9)

    def colour(label):
        return UNKNOWN_COLOUR if label == unknown_label else colours.get(label, UNKNOWN_COLOUR)

    stops = ",".join(f"{colour(label)} {100 * float(start) / end:.2f}% {100 * float(stop) / end:.2f}%"
                     for start, stop, label, _ in blocks)
    title = "\n".join(f"{clock(float(start))}-{clock(float(stop))} {label} {percent(float(confidence))}"
                      for start, stop, label, confidence in blocks)
    length = f"{end:.1f} s" if end < 60 else clock(end)
    return (f'<td class="timeline"><div style="background:linear-gradient(90deg,{stops})" '
            f'title="{escape(title)}"></div><span>0</span><span class="end">{length}</span></td>')


def legend_html(rows: Sequence[Mapping], colours: Mapping[str, str], unknown_label: str) -> str:
    shown = sorted({block[2] for row in rows for block in row.get(TIMELINE) or ()},
                   key=lambda label: (label == unknown_label, label))
    items = "".join(f'<span class="swatch" style="background:'
                    f'{UNKNOWN_COLOUR if label == unknown_label else colours.get(label, UNKNOWN_COLOUR)}"></span>'
                    f"{escape(label)}" for label in shown)
    return f'<p class="legend">Timeline: {items}</p>'
