"""The watch itself: quiet on a quiet server, and it does see a stalled one."""

import os
import signal
import time

import pytest

from hostile.harness import HostileServer, Watch


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = HostileServer(tmp_path_factory.mktemp("watch"))
    yield srv
    assert srv.stop() == 0


def test_a_quiet_server_passes(server):
    with Watch(server) as watch:
        time.sleep(0.5)
    watch.check(max_stall_s=1.0, max_rss_growth_mb=50)
    assert len(watch.latencies["rest"]) > 5 and len(watch.latencies["grpc"]) > 5


def test_a_stalled_server_fails_the_check(server):
    with Watch(server) as watch:
        os.kill(server.proc.pid, signal.SIGSTOP)  # stands for one request that holds the event loop
        time.sleep(1.5)
        os.kill(server.proc.pid, signal.SIGCONT)
    with pytest.raises(AssertionError, match="a normal call waited"):
        watch.check(max_stall_s=1.0)
    assert watch.max_stall_s >= 1.2
