"""One scrape of a server's ``/metrics``: the Prometheus text format, parsed by prometheus-client's
parser into flat samples ``(sample name, labels) -> value``.

    scrape = fetch_scrape("http://127.0.0.1:8002")          # GET /metrics, parse, stamp the time
    scrape.values("inferline_requests_total")               # [(labels dict, value), ...]
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families

from ..errors import InferlineError

LabelKey = Tuple[Tuple[str, str], ...]


@dataclass
class Scrape:
    at: float
    """When it was taken (time.monotonic(), seconds): rates divide by the difference."""
    samples: Dict[Tuple[str, LabelKey], float] = field(default_factory=dict)

    def values(self, name: str, **match: str) -> List[Tuple[Dict[str, str], float]]:
        """Samples called ``name`` whose labels include ``match``: ``[(labels, value)]``."""
        out = []
        for (sample, key), value in self.samples.items():
            if sample != name:
                continue
            labels = dict(key)
            if all(labels.get(k) == v for k, v in match.items()):
                out.append((labels, value))
        return out

    def value(self, name: str, **labels: str) -> Optional[float]:
        """The one sample with exactly these labels, or None."""
        return self.samples.get((name, label_key(labels)))

    def total(self, name: str, **match: str) -> Optional[float]:
        """Sum of the samples called ``name`` matching ``match`` (e.g. errors over every code); None if none."""
        found = self.values(name, **match)
        return sum(v for _, v in found) if found else None


def label_key(labels: Dict[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


def parse(text: str, at: float) -> Scrape:
    """A scrape from exposition text (raises ValueError on text that is not the format)."""
    scrape = Scrape(at)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            scrape.samples[(s.name, label_key(s.labels))] = float(s.value)
    return scrape


def metrics_url(url: str) -> str:
    """``http://host:8002`` and ``http://host:8002/metrics`` both name the metrics page."""
    url = url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url if url.endswith("/metrics") else url + "/metrics"


def fetch_scrape(url: str, timeout_s: float = 5.0) -> Scrape:
    """GET the metrics page and parse it; an unreachable server or a page that is not Prometheus
    text is an InferlineError naming the URL."""
    url = metrics_url(url)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            text = r.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise InferlineError(f"cannot scrape {url}: {reason}") from None
    at = time.monotonic()
    try:
        return parse(text, at)
    except ValueError as e:
        raise InferlineError(f"{url} is not Prometheus text format: {e}") from None
