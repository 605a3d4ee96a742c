"""`inferline canary ...` and `inferline shadow ...` as an operator types them: start (with and
without the load-test gate), status in words and as JSON, promote (then `models rollback`),
abort, every refusal as one `error:` line and exit status 1, and shadows."""

import json
import os
import re
import shlex

import pytest

from inferline.cli import main
from inferline.demo_models import demo_package_path
from inferline.models.service import open_registry, push
from server_fixtures import make_repository, steady_package, with_config

README = os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md")


@pytest.fixture
def repo(tmp_path):
    """The demo models, and "steady": version 1 live, version 2 staged (a generous SLO, so that
    the gate passes on a busy machine)."""
    v2 = with_config(steady_package(tmp_path / "v2"), slo={"p99_ms": 1000.0})
    return make_repository(tmp_path, extra=[steady_package(tmp_path / "v1"), v2])


def cli(capsys, repo, *args):
    """(exit status, stdout, stderr) of `inferline ARGS --repository REPO`."""
    status = main([*args, "--repository", repo])
    out = capsys.readouterr()
    return status, out.out, out.err


def registry_of(repo):
    return open_registry(repo)


def states(repo, name="steady"):
    registry = open_registry(repo)
    try:
        return {r.version: (r.state, r.is_live) for r in registry.list(name)}
    finally:
        registry.close()


def test_start_status_promote_then_models_rollback(capsys, repo):
    status, out, err = cli(capsys, repo, "canary", "start", "steady:2", "--skip-gate", "--steps", "5,10",
                           "--interval", "2m", "--hold")
    assert (status, err) == (0, "")
    assert out.splitlines()[0] == "steady:2 rollout #1: canary, step 1 of 2, weight 5%, against version 1; held"
    assert "steps 5%, 10%; 120 s a step; held: promote by hand" in out
    assert "gate: skipped by request (--skip-gate)" in out
    assert states(repo)[2] == ("canary", False)

    status, out, _ = cli(capsys, repo, "canary", "status", "steady")
    assert status == 0
    assert "steady:2 rollout #1: canary, step 1 of 2, weight 5%" in out
    assert re.search(r"window rollout:1:0 \(step 1, 5%\):\n +canary v2 +stable v1\n +requests +0 +0\n"
                     r" +error rate +n/a +n/a\n +p99 +n/a +n/a\n +accuracy +n/a \(0 labels\) +n/a \(0 labels\)\n"
                     r" +agreement n/a over 0 pairs; canary_accuracy_delta n/a", out), out
    assert re.search(r"history:\n  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  start +#1  "
                     r"gate skipped by request \(--skip-gate\)\n", out), out

    status, out, _ = cli(capsys, repo, "canary", "status", "steady", "--json")
    doc = json.loads(out)
    assert status == 0 and doc["model"] == "steady" and doc["shadow"] is None
    assert (doc["rollout"]["version"], doc["rollout"]["status"], doc["rollout"]["weight"]) == (2, "canary", 5.0)
    assert doc["window"]["canary"]["requests"] == 0 and doc["window"]["stable"]["version"] == 1
    assert [e["action"] for e in doc["history"]] == ["start"]
    assert doc["history"][0]["evidence"]["skip_gate"] is True

    status, out, _ = cli(capsys, repo, "canary", "promote", "steady")
    assert status == 0 and out.startswith("steady:2 rollout #1: promoted, step 1 of 2, weight 5%, against version 1;")
    assert out.rstrip().endswith(": promoted by the operator")
    assert states(repo) == {1: ("retired", False), 2: ("live", True)}
    _, out, _ = cli(capsys, repo, "canary", "status", "steady")
    assert "promoted" in out and "window" not in out  # the latest rollout, ended: no current window

    assert cli(capsys, repo, "models", "rollback", "steady")[:2] == (0, "steady:1\n")
    assert states(repo)[1] == ("live", True)


def test_start_then_abort_retires_the_canary(capsys, repo):
    assert cli(capsys, repo, "canary", "start", "steady:2", "--skip-gate")[0] == 0
    status, out, err = cli(capsys, repo, "canary", "abort", "steady")
    assert (status, err) == (0, "")
    assert out.startswith("steady:2 rollout #1: aborted, step 1 of 5") and "aborted by the operator" in out
    assert states(repo) == {1: ("live", True), 2: ("retired", False)}
    _, out, _ = cli(capsys, repo, "canary", "status", "steady")
    assert re.search(r"start +#1  gate skipped by request \(--skip-gate\)\n"
                     r".*aborted +#1  aborted by the operator", out), out


def refusal(capsys, repo, *args):
    status, out, err = cli(capsys, repo, *args)
    assert status == 1 and out == "" and err.startswith("error: ") and err.count("\n") == 1, (status, out, err)
    return err


@pytest.mark.parametrize("args, message", [
    (["steady", "--skip-gate"], "error: NAME:VERSION: give the version to roll out, e.g. steady:2 (got 'steady')"),
    (["steady:x"], "error: NAME:VERSION: version in 'steady:x' must be a positive integer"),
    (["steady:2", "--steps", "0,150"], "error: steps: weight 0 is outside 0-100"),
    (["steady:2", "--steps", "10,5"], "error: steps: weights must increase strictly, got 10, 5"),
    (["steady:2", "--interval", "soon"], "error: interval: expected a duration like 60s, 2m or 500ms, got 'soon'"),
    (["steady:2", "--interval", "0s"], "error: interval: must be above 0 seconds"),
    (["steady:1", "--skip-gate"], "error: model 'steady' version 1 is already live"),
    (["steady:9", "--skip-gate"], "version 9"),
    (["nope:1", "--skip-gate"], "'nope'"),
])
def test_start_refusals(capsys, repo, args, message):
    assert message in refusal(capsys, repo, "canary", "start", *args)
    assert states(repo)[2] == ("staged", False)  # nothing changed


def test_refusals_that_depend_on_the_registry(capsys, repo, tmp_path):
    registry = open_registry(repo)
    try:
        push(registry, steady_package(tmp_path / "lonely1", name="lonely"), live=False)
        registry.set_state("lonely", 1, "staged")
        push(registry, steady_package(tmp_path / "lonely2", name="lonely", max_batch=2), live=False)
        registry.record_load("steady", 2, failure="test: the artifact does not load")
    finally:
        registry.close()
    assert "error: model 'lonely' has no live version: a canary needs a stable version" in refusal(
        capsys, repo, "canary", "start", "lonely:2", "--skip-gate")
    assert "error: model 'steady' version 2 failed to load (test: the artifact does not load)" in refusal(
        capsys, repo, "canary", "start", "steady:2", "--skip-gate")
    assert "error: model 'steady' has no canary running" in refusal(capsys, repo, "canary", "promote", "steady")
    assert "error: model 'steady' has no canary running" in refusal(capsys, repo, "canary", "abort", "steady")


def test_a_second_canary_is_refused(capsys, repo, tmp_path):
    registry = open_registry(repo)
    try:
        v3 = push(registry, steady_package(tmp_path / "v3", max_batch=2), live=False).version
    finally:
        registry.close()
    assert cli(capsys, repo, "canary", "start", "steady:2", "--skip-gate")[0] == 0
    err = refusal(capsys, repo, "canary", "start", f"steady:{v3}", "--skip-gate")
    assert "error: model 'steady' already has a canary: version 2 at 5% (rollout #1); promote or abort it first" in err


def test_shadow_start_status_stop(capsys, repo):
    status, out, _ = cli(capsys, repo, "shadow", "start", "steady:2", "--share", "50")
    assert (status, out) == (0, "steady:2 shadow #1: 50% of the requests copied, answers compared\n")
    status, out, _ = cli(capsys, repo, "shadow", "status", "steady")
    assert status == 0 and re.fullmatch(r"shadow #1: steady:2 at 50% since [\d: -]+; agreement n/a over 0 pairs, "
                                        r"p99 n/a, 0 errors, 0 dropped\n", out), out
    status, out, _ = cli(capsys, repo, "shadow", "status", "steady", "--json")
    doc = json.loads(out)
    assert (doc["version"], doc["share"], doc["window"]["pairs"]) == (2, 50.0, 0)
    assert "already has shadow #1" in refusal(capsys, repo, "shadow", "start", "steady:2")
    assert "share: expected a percentage above 0 and at most 100" in refusal(
        capsys, repo, "shadow", "start", "steady:2", "--share", "150")
    status, out, _ = cli(capsys, repo, "shadow", "stop", "steady")
    assert status == 0 and out.startswith("steady:2 shadow #1 stopped (ran since ")
    assert cli(capsys, repo, "shadow", "status", "steady")[1] == "model 'steady': no shadow running\n"
    assert "error: model 'steady' has no running shadow to stop" in refusal(capsys, repo, "shadow", "stop", "steady")
    assert "NAME:VERSION: give the version" in refusal(capsys, repo, "shadow", "start", "steady")
    _, out, _ = cli(capsys, repo, "canary", "status", "steady")
    assert "no canary has run" in out and "shadow_start" in out and "shadow_stop" in out


def test_the_gate_runs_first_and_its_numbers_are_printed(capsys, repo):
    status, out, err = cli(capsys, repo, "canary", "start", "steady:2", "--gate-seconds", "1")
    assert (status, err) == (0, "")
    gate = re.search(r"gate: passed at 40 rps for 1 s: 40 of 40 answered, 0 errors \(0\.00%\), p50 [\d.]+ ms, "
                     r"p99 ([\d.]+) ms \(SLO: p99 1000\.0 ms, error rate 0\.10%\)\n"
                     r"  gate rate: 2 x the floor of 20 rps \(no slo.peak_rps declared, no observed peak\)\n", out)
    assert gate and float(gate.group(1)) <= 1000.0, out
    doc = json.loads(cli(capsys, repo, "canary", "status", "steady", "--json")[1])
    evidence = doc["history"][0]["evidence"]["gate"]
    assert evidence["passed"] and evidence["sent"] == 40 and "skip_gate" not in doc["history"][0]["evidence"]
    _, out, _ = cli(capsys, repo, "canary", "status", "steady")
    assert re.search(r"start +#1  gate passed: p99 [\d.]+ ms, error rate 0\.00% at 40 rps\n", out), out


def test_a_failed_gate_refuses_the_start_and_is_recorded(capsys, repo, tmp_path):
    registry = open_registry(repo)
    try:  # an SLO no model meets: p99 within 1 microsecond
        v3 = push(registry, with_config(steady_package(tmp_path / "v3", max_batch=2), slo={"p99_ms": 0.001}),
                  live=False).version
    finally:
        registry.close()
    err = refusal(capsys, repo, "canary", "start", f"steady:{v3}", "--gate-seconds", "0.25")
    assert f"error: model 'steady' version {v3}: the load-test gate failed at 40 requests/s" in err
    assert "the canary was not started" in err
    doc = json.loads(cli(capsys, repo, "canary", "status", "steady", "--json")[1])
    assert doc["rollout"]["status"] == "gate_failed" and doc["history"][-1]["action"] == "gate_failed"
    assert states(repo)[v3] == ("staged", False)


def test_the_readme_commands_run_as_written(capsys, tmp_path):
    """The README's canary and shadow commands, in order, on a repository where digits-mlp has a
    second version (the gate is shortened to 1 s; it runs for slo.gate_seconds otherwise)."""
    v2 = with_config(_copy(demo_package_path("digits-mlp"), tmp_path / "v2"), slo={"p99_ms": 1000.0})
    repo = make_repository(tmp_path, extra=[(v2, "digits-mlp")])
    with open(README, encoding="utf-8") as f:
        block = next(b for b in re.findall(r"```sh\n(.*?)```", f.read(), flags=re.S) if "inferline canary" in b)
    lines = [shlex.split(line, comments=True) for line in block.splitlines()]
    lines = [args for args in lines if args and args[1] in ("canary", "shadow")]
    assert len(lines) >= 6
    for args in lines:
        extra = ["--gate-seconds", "1"] if args[1:3] == ["canary", "start"] and "--skip-gate" not in args else []
        status, out, err = cli(capsys, repo, *args[1:], *extra)
        assert status == 0, (args, out, err)
    assert states(repo, "digits-mlp")[2] == ("live", True)


def _copy(src, dest) -> str:
    import shutil
    shutil.copytree(src, str(dest))
    return str(dest)
