"""``inferline report``: one HTML page over a time range, from Prometheus (the recording rules) and
the inference logs.

    build_report(since_s=86400, out="report.html", logs_root="~/.inferline/logs",
                 prometheus="http://127.0.0.1:9090")

Latency percentiles, throughput, batch fill, fallback and error ratios come from Prometheus when a
URL is given, else from the logs' sampled records (the logs have no batch fill or errors); canary
vs stable agreement and accuracy come from the logs (mirrored pairs, labelled records), with
Prometheus's canary agreement drawn beside them when it has one.
"""

from __future__ import annotations

import functools
import math
import os
import re
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional

import numpy as np

from . import logs as logs_mod
from .html import Section, Table, render
from .plots import Line, color_of, line_plot
from .prom import Series, fetch_rules
from ..errors import InferlineError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
ARMS = ("stable", "canary", "shadow")


def parse_since(text: str) -> float:
    """``90s``, ``15m``, ``6h``, ``1d``, ``2w`` (or a bare number of seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise InferlineError(f"--since wants a duration like 30m, 6h, 1d or 2w, not {text!r}")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


def _ms(v: Optional[float]) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.2f}"


def _pct(v: Optional[float]) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def _prom_lines(series: List[Series], scale: float = 1.0, suffix: str = "", dashed: bool = False,
                colors: Optional[Dict[str, str]] = None) -> List[Line]:
    colors = colors if colors is not None else {}
    out = []
    for s in series:
        color = colors.setdefault(s.name(), color_of(len(colors)))
        out.append(Line(s.name() + suffix, s.times, s.values * scale, dashed=dashed, color=color))
    return out


def _prom_sections(rules: Dict[str, List[Series]], plot) -> List[Section]:
    colors: Dict[str, str] = {}
    latency = _prom_lines(rules["p99"], 1e3, " p99", colors=colors) + \
        _prom_lines(rules["p50"], 1e3, " p50", dashed=True, colors=colors)
    note = "Prometheus recording rules (5-minute windows), per model:version. "
    return [
        Section("Latency percentiles", plot("Core latency, enqueue to answer (p99 solid, p50 dashed)", "ms",
                                                 latency), note + "Requests answered OK."),
        Section("Throughput", plot("Requests accepted per second", "requests/s",
                                        _prom_lines(rules["throughput"], colors=colors)), note),
        Section("Batch fill", plot("Rows executed per batch slot", "fill", _prom_lines(
            rules["batch_fill"], colors=colors), percent=True), note),
        Section("Fallback rate", plot("Routed requests answered along a fallback chain", "fallback",
                                           _prom_lines(rules["fallback"], colors=colors), percent=True),
                note.replace("model:version", "model")),
        Section("Error rate", plot("Errors per accepted request", "errors", _prom_lines(
            rules["errors"], colors=colors), percent=True), note),
    ]


def _log_sections(per_model: Dict[str, "logs_mod.ModelSeries"], plot) -> List[Section]:
    latency, rate, fallback = [], [], []
    for i, (model, s) in enumerate(per_model.items()):
        if s.p50_ms is None:
            continue
        c = color_of(i)
        latency += [Line(f"{model} p99", s.p99_ms.times(), s.p99_ms.values, color=c),
                    Line(f"{model} p50", s.p50_ms.times(), s.p50_ms.values, True, c)]
        rate.append(Line(model, s.rate.times(), s.rate.values, color=c))
        fallback.append(Line(model, s.fallback_ratio.times(), s.fallback_ratio.values, color=c))
    note = "From the inference logs' sampled requests (no Prometheus given: --prometheus URL draws the rules). "
    return [
        Section("Latency percentiles", plot("Latency of sampled requests (p99 solid, p50 dashed)", "ms",
                                                 latency), note),
        Section("Throughput", plot("Sampled requests logged per second", "records/s", rate),
                note + "A share of the traffic (each model's logging.sample_rate), not the request rate."),
        Section("Batch fill", None, empty="not in the inference logs: give --prometheus URL"),
        Section("Fallback rate", plot("Sampled requests answered along a fallback chain", "fallback",
                                           fallback, percent=True), note),
    ]


def _canary_sections(per_model, rules, plot) -> List[Section]:
    agreement, accuracy = [], []
    for i, (model, s) in enumerate(per_model.items()):
        c = color_of(i)
        for kind, curve in s.agreement.items():
            agreement.append(Line(f"{model} {kind.replace('_pair', '')} vs stable (logs)", curve.times(), curve.values,
                                  dashed=kind == "shadow_pair", color=c))
        for arm, curve in s.accuracy.items():
            accuracy.append(Line(f"{model} {arm}", curve.times(), curve.values, dashed=arm != "canary", color=c))
    if rules:
        agreement += _prom_lines(rules["canary_agreement"], suffix=" canary vs stable (Prometheus)")
    return [
        Section("Canary vs stable: agreement", plot("Mirrored pairs whose answers agree", "agreement",
                                                         agreement, percent=True),
                "The same request through both versions (canary, or shadow vs live)."),
        Section("Canary vs stable: accuracy", plot("Accuracy on labelled requests, by arm (canary solid)",
                                                        "accuracy", accuracy, percent=True),
                "Records with a label (feedback), predicted class against it."),
    ]


def _logs_table(per_model) -> Table:
    t = Table("From the inference logs", ["model", "records", "p50 ms", "p99 ms", "fallback", "canary agreement",
                                          "accuracy stable", "accuracy canary"])
    for model, s in per_model.items():
        tot = s.totals
        pairs = tot.get("pairs:canary_pair")
        agree = f"{_pct(tot.get('agreement:canary_pair'))} of {pairs:.0f}" if pairs else "–"
        acc = [f"{_pct(tot[f'accuracy:{a}'])} of {tot[f'labelled:{a}']:.0f}" if f"accuracy:{a}" in tot else "–"
               for a in ("stable", "canary")]
        t.rows.append([model, str(s.records), _ms(tot.get("p50_ms")), _ms(tot.get("p99_ms")),
                       _pct(tot.get("fallback_ratio")), agree, *acc])
    t.note = "Latency and fallback over sampled requests; agreement over mirrored canary pairs."
    return t


def _prom_table(rules) -> Table:
    t = Table("From Prometheus", ["model:version", "mean req/s", "max p99 ms", "mean batch fill", "max error rate"])
    by = {k: {s.name(): s.values for s in rules[k]} for k in ("throughput", "p99", "batch_fill", "errors")}

    def stat(key, name, fn):
        v = by[key].get(name)
        return None if v is None or not np.isfinite(v).any() else float(fn(v[np.isfinite(v)]))

    for name in sorted(set(by["throughput"]) | set(by["p99"])):
        p99 = stat("p99", name, np.max)
        t.rows.append([name, _ms(stat("throughput", name, np.mean)), _ms(None if p99 is None else 1e3 * p99),
                       _pct(stat("batch_fill", name, np.mean)), _pct(stat("errors", name, np.max))])
    return t


def build_report(since_s: float, out: str, logs_root: Optional[str] = None, prometheus: Optional[str] = None,
                 now: Optional[datetime] = None) -> dict:
    """Writes the page to ``out``; returns what it found ({"models": [...], "sections": {title: drawn}})."""
    end = now or datetime.now(timezone.utc)
    start = end - timedelta(seconds=since_s)
    root = os.path.expanduser(logs_root or logs_mod.DEFAULT_ROOT)
    if "://" in root:
        raise InferlineError(f"--logs takes a local directory, not {root}")
    table = logs_mod.read_inference(root, start, end)
    edges = logs_mod.bin_edges(start, end)
    per_model = logs_mod.aggregate(table, edges) if table is not None and table.num_rows else {}
    rules = fetch_rules(prometheus, start, end) if prometheus else None
    first = _first_data(rules, table)
    clip = first is not None and first - start > (end - start) / 20 and end - first > (end - start) / 100
    shown = first - (end - first) / 50 if clip else start  # a short run fills the plots, not their last pixels
    plot = functools.partial(line_plot, xlim=(shown, end))  # every plot on the same time axis
    sections = _prom_sections(rules, plot) if rules else _log_sections(per_model, plot)
    sections += _canary_sections(per_model, rules, plot)
    tables = ([_prom_table(rules)] if rules else []) + ([_logs_table(per_model)] if per_model else [])
    source = (f"Prometheus {prometheus}" if prometheus else "no Prometheus") + \
        (f"; inference logs {root}" if table is not None else f"; no inference logs under {root}")
    subtitle = (f"{start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC ({_duration(since_s)}); {source}; "
                f"{sum(s.records for s in per_model.values())} log records")
    if shown != start:
        subtitle += f"; plots start at the first data, {first:%Y-%m-%d %H:%M:%S}"
    with open(out, "w", encoding="utf-8") as f:
        f.write(render("inferline report", subtitle, sections, tables))
    return {"models": sorted(per_model), "sections": {s.title: s.png is not None for s in sections}}


def _first_data(rules, table) -> Optional[datetime]:
    """The earliest time with a value: Prometheus's series (finite points) and the log records."""
    found = []
    for series in (rules or {}).values():
        for s in series:
            finite = np.flatnonzero(np.isfinite(s.values))
            if len(finite):
                found.append(s.times[finite[0]])
    if table is not None and table.num_rows:
        found.append(min(table.column("ts").to_pylist()))
    return min(found) if found else None


def _duration(seconds: float) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds >= UNITS[unit] and seconds % UNITS[unit] == 0:
            return f"{seconds / UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"
