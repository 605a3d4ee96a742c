"""Fixtures of the model lifecycle tests: a private HOME (so the default repository is fresh)
and a repository path."""

import pytest


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INFERLINE_REPOSITORY", raising=False)
    return tmp_path / "home"


@pytest.fixture
def repo(tmp_path):
    return str(tmp_path / "repo")
