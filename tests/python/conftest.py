"""Fixtures for every test folder; helpers live in helpers.py and server_fixtures.py."""

import numpy as np
import pytest

import inferline as il


@pytest.fixture
def engine():
    e = il.Engine()
    yield e
    e.close()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
