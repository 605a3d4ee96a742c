"""A Prometheus server's HTTP API (``/api/v1/query_range``) over the recording rules shipped in
deploy/prometheus/rules/inferline-recording.yml, for ``inferline report``.

    series = query_range("http://127.0.0.1:9090", RULES["p99"], start, end, step_s=60)
    # [Series(labels={"model": "digits-mlp", "version": "1"}, times=[datetime...], values=np.array)]
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, List

import numpy as np

from ..errors import InferlineError

RULES = {
    "p50": "model_version:inferline_request_duration_seconds:p50_rate5m",
    "p99": "model_version:inferline_request_duration_seconds:p99_rate5m",
    "throughput": "model_version:inferline_requests:rate5m",
    "errors": "model_version:inferline_error_ratio:rate5m",
    "batch_fill": "model_version:inferline_batch_fill_ratio:rate5m",
    "fallback": "model:inferline_fallback_ratio:rate5m",
    "canary_agreement": "model:inferline_canary_agreement:ratio_rate5m",
    "canary_accuracy_delta": "model_version:inferline_canary_accuracy_delta:max",
}
"""What the report draws from Prometheus: recording rules, so it agrees with the dashboard and alerts."""

MAX_POINTS = 300


@dataclass
class Series:
    labels: Dict[str, str]
    times: List[datetime]
    values: np.ndarray

    def name(self) -> str:
        """``model:version`` or ``model`` (what the rule keeps of the labels)."""
        return ":".join(self.labels[k] for k in ("model", "version") if k in self.labels)


def step_for(start: datetime, end: datetime) -> float:
    """At most MAX_POINTS points, at least one a second."""
    return max(1.0, round((end - start).total_seconds() / MAX_POINTS))


def query_range(url: str, expr: str, start: datetime, end: datetime, step_s: float, timeout_s: float = 30) -> List[Series]:
    query = urllib.parse.urlencode({"query": expr, "start": f"{start.timestamp():.3f}",
                                    "end": f"{end.timestamp():.3f}", "step": f"{step_s:g}"})
    address = f"{url.rstrip('/')}/api/v1/query_range?{query}"
    try:
        with urllib.request.urlopen(address, timeout=timeout_s) as r:
            doc = json.loads(r.read())
    except urllib.error.HTTPError as e:  # Prometheus answers a bad query with 400 and a JSON error
        doc = _json_or_none(e.read()) or {"status": "error", "error": f"HTTP {e.code}"}
    except (urllib.error.URLError, OSError) as e:
        raise InferlineError(f"cannot query Prometheus at {url}: {getattr(e, 'reason', e)}") from None
    except ValueError:
        raise InferlineError(f"{url} did not answer like Prometheus's HTTP API (not JSON)") from None
    if doc.get("status") != "success":
        raise InferlineError(f"Prometheus at {url} refused {expr}: {doc.get('error', doc)}")
    out = []
    for r in doc["data"]["result"]:
        times = [datetime.fromtimestamp(float(t), timezone.utc) for t, _ in r["values"]]
        values = np.array([float(v) for _, v in r["values"]])
        out.append(Series({k: v for k, v in r["metric"].items() if k != "__name__"}, times, values))
    return sorted(out, key=Series.name)


def _json_or_none(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return None


def fetch_rules(url: str, start: datetime, end: datetime) -> Dict[str, List[Series]]:
    """Every rule of RULES over [start, end]: {key: series} (a rule without data: [])."""
    step = step_for(start, end)
    return {key: query_range(url, expr, start, end, step) for key, expr in RULES.items()}
