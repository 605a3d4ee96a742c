"""Line plots over time as PNG (base64) for the report page: matplotlib's object API (a Figure of
its own per plot, no pyplot state), so reports can be built from any thread.

    png = line_plot("p99 latency", "ms", [Line("digits-mlp:1", times, values)])    # None: nothing to draw
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from datetime import datetime
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InferlineError


@dataclass
class Line:
    label: str
    times: Sequence[datetime]
    values: np.ndarray
    dashed: bool = False
    color: Optional[str] = None


def _figure():
    try:
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
        from matplotlib.figure import Figure
        from matplotlib.ticker import PercentFormatter
    except ImportError:
        raise InferlineError("inferline report needs matplotlib (pip install 'inferline[report]')") from None
    return Figure(figsize=(10, 3.4), dpi=100, layout="constrained"), AutoDateLocator, ConciseDateFormatter, \
        PercentFormatter


def line_plot(title: str, ylabel: str, lines: List[Line], percent: bool = False,
              xlim: Optional[Tuple[datetime, datetime]] = None) -> Optional[str]:
    """A PNG (base64) with one line per ``Line`` over time; None when no line has a finite value.
    ``percent``: values are ratios, drawn on a 0-100% axis. A line with few points gets markers
    (one point alone would not show as a line). ``xlim``: the report's range, the same on every plot."""
    lines = [ln for ln in lines if np.isfinite(np.asarray(ln.values, float)).any()]
    if not lines:
        return None
    fig, locator_cls, formatter_cls, percent_formatter = _figure()
    ax = fig.add_subplot()
    for ln in lines:
        values = np.asarray(ln.values, float) * (100.0 if percent else 1.0)
        sparse = np.isfinite(values).sum() <= 12
        ax.plot(list(ln.times), values, label=ln.label, linestyle="--" if ln.dashed else "-",
                marker="o" if sparse else None, markersize=4, color=ln.color, linewidth=1.6,
                zorder=3)  # above the axes' frame: a line at 0 stays visible
    locator = locator_cls()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(formatter_cls(locator))
    ax.set_title(title, loc="left", fontsize=12)
    ax.set_ylabel(ylabel)
    if percent:
        top = max(np.nanmax(np.asarray(ln.values, float)) for ln in lines) * 100
        ax.set_ylim(0, 104 if top > 50 else max(1.0, top * 1.25))  # a line at 100% stays visible
        ax.yaxis.set_major_formatter(percent_formatter(100))
    else:
        ax.set_ylim(bottom=0)
    if xlim:
        ax.set_xlim(*xlim)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)  # beside the axes: never over a line
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def color_of(index: int) -> str:
    return PALETTE[index % len(PALETTE)]
