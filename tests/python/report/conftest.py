"""Tests of `inferline stats` and `inferline report` (python/inferline/report/): the rate and
percentile math on scrapes made by prometheus-client itself, the commands against a real
`inferline serve` (and a real Prometheus, reusing tests/python/server/test_metrics_prometheus.py),
the live view read back from tmux, and the report page screenshotted by headless Chromium.
Inference logs are written here with the documented Parquet schema (logs_helpers.py), not by the
server's log writer."""
