#!/usr/bin/env bash
# Installs inferline into the active Python environment with its native gRPC frontend: the C++
# gRPC and protobuf development packages (and a C++ compiler) with apt-get when they are missing,
# as root or through sudo, then `pip install .`. Prints which gRPC frontend the build has.
#
#   bash tools/install.sh                  # what the README's first command runs
#   bash tools/install.sh --system-only    # only the apt packages (tests/run.sh, before its own pip install)
#   bash tools/install.sh '.[test]'        # pip install these instead of "."
#
# Without apt-get (or the packages) `pip install .` still works: inferline then serves gRPC with
# its Python frontend, and `inferline serve` says why at start.
set -euo pipefail
cd "$(dirname "$0")/.."

# The native frontend's build needs gRPC's C++ library and CMake package, protobuf's, protoc and
# gRPC's protoc plugin (CMakeLists.txt: find_package(gRPC), protobuf_generate).
packages=(libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libnghttp2-dev pkg-config)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
if command -v dpkg >/dev/null; then
  for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  command -v g++ >/dev/null || missing+=(g++)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    echo "== apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: no apt-get here: install gRPC C++ (with its CMake package), protobuf and protoc yourself" \
         "for the native gRPC frontend; installing with the Python one" >&2
  fi
elif ! command -v dpkg >/dev/null; then
  echo "note: not a Debian/Ubuntu system: the native gRPC frontend is built if CMake finds gRPC C++" >&2
fi

if [ "${1:-}" = "--system-only" ]; then
  exit 0
fi
echo "== pip install ${*:-.}"
python3 -m pip install -q "${@:-.}"
# Run outside the source tree so that the installed package is the one imported.
(cd / && python3 -c '
import inferline._core as c
reason = getattr(c, "NATIVE_FRONTEND", "this build has no native gRPC frontend")
print("inferline installed; gRPC frontend: " + ("native" if not reason else "python (" + reason + ")"))')
