#!/usr/bin/env bash
# A real consumer build: installs the C++ core into a temporary prefix, builds
# csrc/examples/host as a SEPARATE CMake project against that installed package
# (find_package(inferline CONFIG REQUIRED)), and runs it on the demo dense MLP (`dense-demo`, untrained)
# exported from the installed inferline Python package. Fails when the host's
# answers differ from the Python engine's by a single bit.
#   bash tests/consumer.sh            (needs: cmake, a C++20 compiler, inferline installed)
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d "${TMPDIR:-/tmp}/inferline-consumer.XXXXXX")"
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)

echo "== core: build and install into $prefix"
cmake -S . -B build/consumer-core "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DINFERLINE_BUILD_PYTHON=OFF -DINFERLINE_BUILD_TESTS=OFF -DINFERLINE_WITH_CUDA=OFF >/dev/null
cmake --build build/consumer-core
cmake --install build/consumer-core --prefix "$prefix" >/dev/null
test -f "$prefix/include/inferline/version.h"
test -f "$prefix/include/inferline/engine.h"

echo "== demo data from the Python engine"
python3 -c 'import inferline' 2>/dev/null || python3 -m pip install -q .
python3 -c 'import sklearn' 2>/dev/null || python3 -m pip install -q scikit-learn \
  || echo "(scikit-learn unavailable: the export falls back to synthetic digit-like inputs)"
installed_demo="$(python3 -c 'import inferline.demo as d; print(d.__file__)')"
if ! cmp -s "$installed_demo" python/inferline/demo.py; then
  echo "warning: the installed inferline's demo.py differs from this checkout's; run 'pip install .' first" >&2
fi
python3 csrc/examples/host/export_demo.py --out "$work/digits_demo.bin"

echo "== example host: a separate CMake project against the installed package"
cmake -S csrc/examples/host -B "$work/host-build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON
cmake --build "$work/host-build"
"$work/host-build/digits_host" "$work/digits_demo.bin"
