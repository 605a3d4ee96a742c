#!/usr/bin/env bash
# Installs what the tests need, then runs ALL tests: C++ (GoogleTest via ctest)
# and Python (pytest). Exits non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! dpkg -s libgtest-dev >/dev/null 2>&1 || ! command -v g++ >/dev/null; then
  as_root apt-get update -qq
  as_root apt-get install -y -qq libgtest-dev g++ >/dev/null
fi
command -v cmake >/dev/null && command -v ninja >/dev/null || python3 -m pip install -q cmake ninja

# The native gRPC frontend's packages (as the README's first command installs them): built into
# the package below, and its tests run (under CI a build without it fails the server tests).
bash tools/install.sh --system-only
python3 -m pip install -q ".[test]"
# TorchScript tests need torch; this exact CPU build is the one kept offline here.
python3 -m pip install -q "torch==2.13.0" || echo "torch unavailable: the TorchScript tests will be skipped"

# Where nvcc exists the CUDA kernels, their tests and their bench must compile, so that a CUDA
# build break fails CI; the device tests then skip without a GPU.
cuda_args=()
if command -v nvcc >/dev/null; then
  cuda_args=(-DINFERLINE_WITH_CUDA=ON -DINFERLINE_REQUIRE_CUDA=ON -DINFERLINE_BUILD_BENCH=ON)
fi
cmake -S . -B build/tests -G Ninja -DINFERLINE_BUILD_TESTS=ON -DINFERLINE_BUILD_PYTHON=OFF "${cuda_args[@]}" >/dev/null
cmake --build build/tests
ctest --test-dir build/tests --output-on-failure -j2

python3 -m pytest tests/python -q
