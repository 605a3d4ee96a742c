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

# The native ONNX Runtime backend (csrc/ort/) compiles against ONNX Runtime's C API header and, at
# run time, loads the library inside the onnxruntime wheel. Debian has the header in
# libonnxruntime-dev from trixie on (Ubuntu from 24.04); on an older Debian it is taken from
# trixie's archive on the mirror this system already uses. The package is downloaded and its
# headers unpacked into /usr/local/include/onnxruntime, not installed: its library is not used.
ort_headers() {
  local dir
  for dir in /usr/include/onnxruntime /usr/local/include/onnxruntime; do
    [ -f "$dir/onnxruntime_c_api.h" ] && return 0
  done
  command -v apt-get >/dev/null && command -v dpkg >/dev/null || return 0
  local tmp; tmp=$(mktemp -d)
  chmod 755 "$tmp"
  local apt=(apt-get)
  as_root apt-get update -qq || true
  if ! apt-cache show libonnxruntime-dev >/dev/null 2>&1; then
    local uri=""
    if [ -r /etc/os-release ] && grep -q '^ID=debian' /etc/os-release; then
      uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | grep -v security | head -1)
      [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    fi
    if [ -z "$uri" ]; then
      echo "note: no libonnxruntime-dev here: ONNX models run through the onnxruntime Python API" >&2
      rm -rf "$tmp"; return 0
    fi
    mkdir -p "$tmp/sources" "$tmp/lists/partial" "$tmp/cache/archives/partial"
    printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' "$uri" \
      /usr/share/keyrings/debian-archive-keyring.gpg > "$tmp/sources/trixie.sources"
    apt=(apt-get -o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$tmp/sources"
         -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache")
    as_root "${apt[@]}" update -qq || true
  fi
  echo "== ONNX Runtime C API headers (libonnxruntime-dev, unpacked into /usr/local/include/onnxruntime)"
  if (cd "$tmp" && as_root "${apt[@]}" download -qq libonnxruntime-dev) 2>/dev/null \
     && as_root dpkg -x "$tmp"/libonnxruntime-dev_*.deb "$tmp/x" \
     && [ -f "$tmp/x/usr/include/onnxruntime/onnxruntime_c_api.h" ]; then
    as_root mkdir -p /usr/local/include
    as_root cp -r "$tmp/x/usr/include/onnxruntime" /usr/local/include/
  else
    echo "note: could not fetch libonnxruntime-dev: ONNX models run through the onnxruntime Python API" >&2
  fi
  as_root rm -rf "$tmp"
}
ort_headers

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
