#!/usr/bin/env bash
# Downloads, on a development machine with network, the wheels that the GPU machine lacks into .whl/
# (git-ignored through .git/info/exclude), for run_device.sh to install offline:
#
#   bash bench/gpu/fetch_wheels.sh        # then name .whl in the device tool's carry
#
# The GPU machine (Python 3.12, x86-64, no network) has numpy, torch, onnx, pytest, pyyaml, aiohttp,
# grpcio, protobuf, attrs, typing-extensions, but not the rest of inferline's dependencies. Pinned to
# the versions the development machine tests with. grpcio and protobuf come along too: the
# health-checking/reflection wheels need grpcio >= their own version and protobuf >= 6.33.5 (their
# generated code checks both at import); run_device.sh installs each carried wheel only where the
# machine's own copy is missing or older. pytest-asyncio: pyproject's asyncio_mode option is an
# unknown key without it, which filterwarnings = error turns into a failure. nvidia-ml-py: the NVML series
# (tests/python/gpu/test_nvml.py).
# Total about 8 MiB (grpcio is 6 of it).
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEELS=(
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==0.30.0
  grpcio-health-checking==1.81.1 grpcio-reflection==1.81.1 protobuf==6.33.6 grpcio==1.85.3
  pytest-asyncio==1.5.0
  nvidia-ml-py==13.615.71
)
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo /.whl/ >> .git/info/exclude; }
# One version of each: a second copy of a name would stop the whole install there.
for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}
  file_prefix=$(echo "$name" | tr - _)
  find .whl -maxdepth 1 -iname "${file_prefix}-*.whl" ! -iname "${file_prefix}-${spec##*==}-*" -delete
done
# PIP_CONSTRAINT="": this machine's pip.conf constrains some names for its own interpreter.
PIP_CONSTRAINT="" python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}" 2>&1 \
  | { grep -v "is ignored: it is neither" || true; }
ls -la .whl
du -sh .whl
