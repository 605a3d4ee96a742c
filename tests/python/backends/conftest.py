"""Tests of the ONNX Runtime and TorchScript backends. They use the fixtures of tests/python/conftest.py
(`engine`, `rng`) and the helpers of tests/python/helpers.py."""
