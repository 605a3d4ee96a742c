"""``inferline stats``: the rows of rates.py as a rich table, once or refreshed live.

    run_stats("http://127.0.0.1:8002", interval_s=1.0, once=True)     # two scrapes, one table, exit

The live view redraws in place every interval until Ctrl-C; a failed scrape keeps the last table
and says so in the caption (a server restarting is something to watch, not a reason to quit).
"""

from __future__ import annotations

import time
from typing import List, Optional

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .rates import Row, rows
from .scrape import Scrape, fetch_scrape, metrics_url
from ..errors import InferlineError

COLUMNS = (("model", "left"), ("ver", "right"), ("req/s", "right"), ("p50 ms", "right"), ("p99 ms", "right"),
           ("errors", "right"), ("fallback", "right"), ("batch fill", "right"), ("in flight", "right"),
           ("rows queued", "right"),
           ("canary", "left"))
DASH = "–"


def _num(value: Optional[float], fmt: str) -> str:
    return DASH if value is None else format(value, fmt)


def _pct(value: Optional[float]) -> str:
    return DASH if value is None else f"{100 * value:.1f}%"


def cells(row: Row) -> List[str]:
    """The row as the table shows it: ms for latency, % for ratios, – where the interval had nothing."""
    return [row.model, row.version, _num(row.rate, ".1f"),
            _num(None if row.p50 is None else 1e3 * row.p50, ".2f"),
            _num(None if row.p99 is None else 1e3 * row.p99, ".2f"),
            _pct(row.error_ratio), _pct(row.fallback_ratio), _pct(row.batch_fill),
            _num(row.in_flight, ".0f"), _num(row.queued_rows, ".0f"), row.canary]


def table(url: str, table_rows: List[Row], interval_s: Optional[float], note: str = "") -> Table:
    over = f"over the last {interval_s:.1f} s" if interval_s else "first scrape: rates follow"
    t = Table(title=f"inferline stats  {metrics_url(url)}  {time.strftime('%H:%M:%S')}",
              caption=(note + "  " if note else "") + f"{over}; fallback is per model; Ctrl-C quits",
              caption_justify="left")
    for name, justify in COLUMNS:
        t.add_column(name, justify=justify, no_wrap=True)
    for row in table_rows:
        t.add_row(*cells(row))
    if not table_rows:
        t.add_row("(no model versions served)", *[""] * (len(COLUMNS) - 1))
    return t


def _console() -> Console:
    console = Console()
    if not console.is_terminal:  # a pipe or a file: 80 columns by default would fold the table
        console = Console(width=160)
    return console


def run_stats(url: str, interval_s: float = 1.0, once: bool = False, console: Optional[Console] = None) -> int:
    if interval_s <= 0:
        raise InferlineError(f"--interval must be > 0 seconds, not {interval_s:g}")
    console = console or _console()
    prev: Scrape = fetch_scrape(url)  # the first one fails loudly: a wrong --url is a one-line error
    if once:
        time.sleep(interval_s)
        cur = fetch_scrape(url)
        console.print(table(url, rows(prev, cur), cur.at - prev.at))
        return 0
    try:
        with Live(table(url, rows(None, prev), None), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval_s)
                try:
                    cur = fetch_scrape(url)
                except InferlineError as e:
                    live.update(table(url, rows(None, prev), None, note=f"[red]{e}[/red]"), refresh=True)
                    continue
                live.update(table(url, rows(prev, cur), cur.at - prev.at), refresh=True)
                prev = cur
    except KeyboardInterrupt:
        return 0
