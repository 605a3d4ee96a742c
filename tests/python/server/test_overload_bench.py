"""The pure pieces of bench/server/bench_overload.py: outcome counting, goodput, the table.
No server and no load."""

import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "bench", "server"))
import bench_overload as bo  # noqa: E402

D = 0.2


def records():
    return [(0.0, 0.010, "OK", D),                 # in time
            (0.0, 0.200, "OK", D),                 # exactly at the deadline: counts
            (1.0, 1.300, "OK", D),                 # OK but timed past the deadline
            (2.0, 2.001, "UNAVAILABLE", D),
            (2.0, 2.001, "UNAVAILABLE", D),
            (3.0, 3.200, "DEADLINE_EXCEEDED", D),
            (4.0, 4.100, "CANCELLED", D),
            (5.0, 5.001, "INTERNAL", D),
            (6.0, 6.001, "other", D)]


def test_count_outcomes_keeps_the_main_codes_and_every_other_by_name():
    counts = bo.count_outcomes(records())
    assert list(counts)[:5] == list(bo.CODES)
    assert counts == {"OK": 3, "UNAVAILABLE": 2, "RESOURCE_EXHAUSTED": 0, "DEADLINE_EXCEEDED": 1,
                      "CANCELLED": 1, "INTERNAL": 1, "other": 1}
    assert sum(counts.values()) == len(records())
    assert bo.count_outcomes([]) == dict.fromkeys(bo.CODES, 0)


def test_goodput_counts_ok_answers_within_their_deadline_per_second():
    assert bo.goodput(records(), 2.0) == pytest.approx(1.0)  # 2 good answers over 2 s
    no_deadline = [(s, a, c, None) for s, a, c, _ in records()]
    assert bo.goodput(no_deadline, 1.0) == 3  # capacity runs: every OK counts
    assert bo.goodput([], 5.0) == 0


def test_summarize_separates_late_ok_answers_from_goodput():
    got = bo.summarize(records(), 1.0)
    assert got["sent_rps"] == len(records())
    assert got["goodput_rps"] == 2 and got["ok_rps"] == 3 and got["late_ok"] == 1
    assert 200 < got["p99_ms"] <= 300
    assert math.isnan(bo.summarize([(0.0, 0.1, "UNAVAILABLE", D)], 1.0)["p99_ms"])


def test_summarize_native_merges_the_client_processes():
    from inferline.loadgen.histogram import Histogram

    def result(latencies_us, ok, errors, sent, lags_us=()):
        h, lag = Histogram(), Histogram()
        h.record_many(latencies_us)
        lag.record_many(lags_us)
        return {"latency": h.to_dict(), "lag": lag.to_dict(), "errors": errors, "sent_total": sent, "ok": ok}

    got = bo.summarize_native([result([1000.0] * 98, 98, {"UNAVAILABLE": 2}, 100),
                               result([150_000.0] * 2, 2, {"DEADLINE_EXCEEDED": 3}, 5, [20.0])], 1.0)
    assert (got["sent_rps"], got["goodput_rps"], got["ok_rps"], got["late_ok"]) == (105, 100, 100, 0)
    assert list(got["codes"])[:5] == list(bo.CODES)
    assert got["codes"]["OK"] == 100 and got["codes"]["UNAVAILABLE"] == 2 and got["codes"]["DEADLINE_EXCEEDED"] == 3
    assert 148.5 <= got["p99_ms"] <= 151.5  # the 99th of 100 answers is one of the two at 150 ms
    assert 0.019 <= got["client_lag_p99_ms"] <= 0.0205


def test_health_summary():
    h = bo.health_summary([0.001, 0.002, 2.0], timeouts=1, errors=2)
    assert h["max_ms"] == pytest.approx(2000.0)
    assert 2.0 < h["p99_ms"] <= 2000.0
    assert (h["timeouts"], h["errors"], h["probes"]) == (1, 2, 5)
    assert math.isnan(bo.health_summary([], 0)["max_ms"])


def test_refusals_text():
    assert bo.refusals_text(bo.count_outcomes(records()), late_ok=1) == \
        "UNAVAILABLE=2 DEADLINE_EXCEEDED=1 CANCELLED=1 INTERNAL=1 other=1 (OK too late=1)"
    assert bo.refusals_text(bo.count_outcomes([(0, 0, "OK", None)])) == "-"


def row(server, mode, multiple, goodput_rps):
    result = bo.summarize(records(), 1.0)
    return {"server": server, "mode": mode, "multiple": multiple, **result, "goodput_rps": goodput_rps,
            "offered_rps": 1234.4, "ratio": goodput_rps / 1000, "sent_ratio": 1.5, "ok_ratio": 0.9,
            "health": bo.health_summary([0.001, 0.05], 0), "probe": bo.health_summary([0.002], 1),
            "client_lag_p99_ms": 1.25,
            "rss_start": 100.2, "rss_end": 120.7}


def test_format_table_one_aligned_line_per_run_with_the_refusals():
    rows = [row("inferline", "capacity", 1, 1000.0), row("kserve", "recov-closed", 0.5, 12.0)]
    lines = bo.format_table(rows).splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:2] == ["server", "mode"] and lines[0].endswith("refusals by code")
    assert len({line.index("  UNAVAILABLE") for line in lines[1:]}) == 1  # columns line up
    assert "inferline" in lines[1] and " 1234 " in lines[1] and " 1.00 " in lines[1] and "100>121" in lines[1]
    assert "recov-closed" in lines[2] and " 0.5 " in lines[2] and " 0.01 " in lines[2]


def test_run_line_is_key_value():
    line = bo.run_line(row("kserve", "open", 10, 500.0))
    fields = dict(f.split("=", 1) for f in line.split())
    assert fields["server"] == "kserve" and fields["x"] == "10" and fields["good/cap"] == "0.50"
    assert fields["refusals"].startswith("UNAVAILABLE=2,DEADLINE_EXCEEDED=1") and fields["ok_too_late"] == "1"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc (Linux)")
def test_process_tree_rss_of_this_process():
    assert bo.process_tree_rss_mb(os.getpid()) > 1
    assert bo.process_tree_rss_mb(2 ** 22 + 12345) == 0  # above pid_max: no such process


def test_closed_loops_offer_their_multiple_when_every_call_lasts_its_deadline():
    # 673 req/s x 200 ms = 134.6 in flight at 1x, over 2 client processes
    assert bo.closed_concurrency(1, 673.0, 2) == 67
    assert bo.closed_concurrency(10, 673.0, 2) == 673
    assert bo.closed_concurrency(3, 673.0, 1) == 404
    assert bo.closed_concurrency(0.001, 1.0, 2) == 1  # at least one
    assert bo.closed_concurrency(10, 673.0, 2, per_process=100) == 1000  # the fixed size, as before


def test_overload_threads_reads_perf_stat_syscall_counts_and_model_time():
    import overload_threads as ot

    report = ("6781,,syscalls:sys_enter_sendmsg,5003,100.00,,\n"
              "<not counted>,,syscalls:sys_enter_read,0,0.00,,\n"
              "10160,,syscalls:sys_enter_futex,5003,100.00,,\n"
              "garbage line\n")
    assert ot.syscall_counts(report) == {"sendmsg": 6781, "futex": 10160}
    assert ot.per_row((1.0, 100.0), (1.5, 500.0)) == "model 1.250 ms per row"
    assert ot.per_row((1.0, 100.0), (1.0, 100.0)) == "model: no rows"


def test_overload_threads_counts_the_machines_tcp_segments():
    import socket

    import overload_threads as ot

    before = ot.tcp_out_segments()
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer, _ = server.accept()
            with peer:
                for _ in range(5):  # each a segment of its own
                    client.sendall(b"x")
                    assert peer.recv(1) == b"x"
    assert ot.tcp_out_segments() - before >= 5
