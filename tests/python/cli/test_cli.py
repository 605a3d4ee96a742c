"""The `inferline` command as a new user meets it: help, pipes, settings from flags and environment."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest

from inferline.cli import main
from inferline.server.settings import ServerSettings, SettingsError, is_loopback


def test_no_subcommand_prints_the_help(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: inferline") and "serve" in out and "models" in out


@pytest.mark.parametrize("args", [["models", "show", "digits-mlp"], ["models", "list"], ["serve", "--help"]])
def test_a_closed_pipe_is_no_traceback(tmp_path, args):
    """`inferline models show m | head -1`: the reader goes away before everything was written."""
    script = textwrap.dedent(f"""
        import os, sys
        r, w = os.pipe()
        os.close(r)                      # nobody will read: every write fails with EPIPE
        os.dup2(w, 1)
        from inferline.cli import main
        sys.exit(main({args!r}))
    """)
    env = {**os.environ, "HOME": str(tmp_path), "INFERLINE_REPOSITORY": str(tmp_path / "repo")}
    if args[0] == "models":
        env.pop("INFERLINE_REPOSITORY")  # the default repository, seeded with the demo models
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert out.returncode in (0, 141)


def test_every_setting_is_a_flag_and_a_variable_of_the_same_name():
    for f in dataclasses.fields(ServerSettings):
        flag = ServerSettings.flag(f)
        assert ServerSettings.env_name(f) == "INFERLINE_" + flag.upper().replace("-", "_")
    names = {ServerSettings.env_name(f) for f in dataclasses.fields(ServerSettings)}
    assert {"INFERLINE_POLL_INTERVAL", "INFERLINE_DRAIN_SECONDS", "INFERLINE_SHUTDOWN_GRACE",
            "INFERLINE_ADMIN_TOKEN", "INFERLINE_REPOSITORY"} <= names


def test_settings_precedence_and_errors(capsys):
    env = {"INFERLINE_POLL_INTERVAL": "0.5", "INFERLINE_WORKERS": "3"}
    s = ServerSettings.from_env(env, workers=2)
    assert (s.poll_interval_s, s.workers) == (0.5, 2)  # flags beat the environment
    assert capsys.readouterr().err == ""
    ServerSettings.from_env({"INFERLINE_HTTP_PROT": "1"})
    assert "unknown environment variable(s) INFERLINE_HTTP_PROT" in capsys.readouterr().err
    for env, message in [({"INFERLINE_WORKERS": "two"}, "INFERLINE_WORKERS='two': expected an integer"),
                         ({"INFERLINE_HTTP_PORT": "70000"}, "a port is 0..65535"),
                         ({"INFERLINE_WORKERS": "0"}, "at least 1"),
                         ({"INFERLINE_TLS_CERT": "c.pem"}, "--tls-cert and --tls-key go together")]:
        with pytest.raises(SettingsError, match=message):
            ServerSettings.from_env(env)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback
