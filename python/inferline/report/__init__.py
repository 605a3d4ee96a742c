"""Views of a running or past server for people: ``inferline stats`` (a live terminal table from a
server's ``/metrics``) and ``inferline report`` (an HTML page with plots from Prometheus and the
inference logs).

    scrape.py   fetch and parse the Prometheus text format into flat samples
    rates.py    per model/version rows from two scrapes: rates, p50/p99 from bucket deltas, ratios
    live.py     the rich table and the live loop of ``inferline stats``
    logs.py     inference logs (Parquet, date/model partitions) -> per-interval aggregates
    prom.py     a Prometheus server's query_range over the recording rules in deploy/prometheus/
    plots.py    matplotlib figures as base64 PNGs
    html.py     the report page
    build.py    ``inferline report``: the range, the sources, the sections and tables, the file

Only clients of the server's outputs (its metrics text, Prometheus, the log files): nothing here
imports the server.
"""
