"""The live view of `inferline stats`, run in a real terminal (a detached tmux session on a
socket of its own) and read back with `tmux capture-pane -p`: the model rows appear, the numbers
update from frame to frame, and Ctrl-C ends it with status 0.

Without tmux the test skips, except under CI (env CI set), where that is a failure."""

import re
import subprocess
import sys
import time
import uuid

from report.stats_helpers import Load, serve, tool

MLP_ROW = re.compile(r"│ digits-mlp\s*│\s*1\s*│\s*([\d.–]+)\s*│\s*([\d.–]+)\s*│\s*([\d.–]+)\s*│")
CLOCK = re.compile(r"inferline stats\s+\S+\s+(\d\d:\d\d:\d\d)")


class Tmux:
    def __init__(self, command: str):
        self.binary = tool("tmux", "apt-get install tmux")
        self.socket = f"inferline-test-{uuid.uuid4().hex[:8]}"  # never touch anyone else's tmux server
        self.run("new-session", "-d", "-s", "stats", "-x", "160", "-y", "20", command)
        self.run("set-option", "-t", "stats", "remain-on-exit", "on")

    def run(self, *args) -> str:
        done = subprocess.run([self.binary, "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "stats")

    def wait(self, cond, timeout: float, what: str) -> str:
        deadline = time.time() + timeout
        while True:
            text = self.screen()
            if cond(text):
                return text
            if time.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{text}")
            time.sleep(0.1)

    def close(self):
        subprocess.run([self.binary, "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def mlp(text: str):
    m = MLP_ROW.search(text)
    return m.groups() if m else None


def test_live_view_in_tmux_shows_the_models_and_updates(tmp_path):
    tool("tmux", "apt-get install tmux")
    server = serve(tmp_path)
    load = tmux = None
    try:
        load = Load(server)
        url = f"http://127.0.0.1:{server.control}"
        # env -u: rich sizes itself by COLUMNS when set, and a test runner's may be 80
        tmux = Tmux(f"env -u COLUMNS -u LINES {sys.executable} -m inferline stats --url {url} --interval 0.5; echo EXIT=$?; sleep 60")
        first = tmux.wait(lambda t: mlp(t) is not None, 30, "the digits-mlp row")
        assert "digits-logreg" in first, first
        frames = []
        for _ in range(3):  # frames with rates, each with a new request count behind it
            text = tmux.wait(lambda t: mlp(t) and mlp(t)[0] != "–" and mlp(t) not in [f[0] for f in frames]
                             and CLOCK.search(t), 10, "a new frame with a rate")
            frames.append((mlp(text), CLOCK.search(text).group(1)))
        rates = [float(r) for (r, _p50, _p99), _ in frames]
        assert all(r > 0 for r in rates), frames
        assert all(p99 != "–" and float(p99) > 0 for (_r, _p50, p99), _ in frames), frames
        assert len({clock for _, clock in frames}) >= 2, frames  # redrawn as time passes, not printed once
        assert first.count("digits-mlp") == 1  # redrawn in place, not scrolled
        tmux.run("send-keys", "-t", "stats", "C-c")
        tmux.wait(lambda t: "EXIT=" in t, 10, "stats to exit on Ctrl-C")
        assert "EXIT=0" in tmux.screen()
    finally:
        if tmux is not None:
            tmux.close()
        if load is not None:
            load.stop()
        assert server.stop() == 0
