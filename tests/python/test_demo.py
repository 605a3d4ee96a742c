import inferline
from inferline.cli import main


def test_demo_runs_and_batches(capsys):
    assert main(["demo", "--seconds", "0.5", "--concurrency", "64"]) == 0
    out = capsys.readouterr().out
    assert "requests/s" in out and "p99" in out
    assert "dense-demo" in out and "digits-mlp" not in out  # not the registry's trained model


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == inferline.__version__
