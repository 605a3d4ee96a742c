"""Fixtures of the registry (storage) tests: a fresh registry and a package source directory."""

import pytest

from inferline.registry import Registry


@pytest.fixture
def reg(tmp_path):
    r = Registry.open(str(tmp_path / "repo"))
    yield r
    r.close()


@pytest.fixture
def src(tmp_path):
    return tmp_path / "src"
