#!/usr/bin/env bash
# A real consumer build: installs the C++ core into a temporary prefix, builds
# csrc/examples/host as a SEPARATE CMake project against that installed package
# (find_package(inferline CONFIG REQUIRED)), and runs it on the demo dense MLP (`dense-demo`, untrained)
# exported from the installed inferline Python package. Fails when the host's
# answers differ from the Python engine's by a single bit. When the package has
# its gRPC frontend (inferline::grpc_frontend: built where CMake finds gRPC), it
# also runs the host as a gRPC server (--serve 0), asks it with the real
# tritonclient, compares the answers with the Python engine's in-process ones,
# and stops it with SIGTERM (exit status 0 expected).
#   bash tests/consumer.sh            (needs: cmake, a C++20 compiler, inferline installed)
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d "${TMPDIR:-/tmp}/inferline-consumer.XXXXXX")"
host_pid=""
trap '[ -n "$host_pid" ] && kill -9 "$host_pid" 2>/dev/null; rm -rf "$work"' EXIT
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

if ! grep -q 'inferline::grpc_frontend' "$prefix"/lib*/cmake/inferline/inferlineTargets.cmake; then
  echo "== (the installed package has no inferline::grpc_frontend: gRPC serving not checked)"
  exit 0
fi

echo "== example host serving gRPC without Python (--serve 0), asked by tritonclient"
python3 -c 'import tritonclient.grpc' 2>/dev/null || python3 -m pip install -q 'tritonclient[grpc]>=2.40,<3'
log="$work/serve.log"
"$work/host-build/digits_host" "$work/digits_demo.bin" --serve 0 >"$log" 2>&1 &
host_pid=$!
port=""
for _ in $(seq 200); do  # up to 20 s
  port="$(sed -n 's/^serving .* over gRPC on .*:\([0-9][0-9]*\) (.*/\1/p' "$log" | head -n 1)"
  [ -n "$port" ] && break
  kill -0 "$host_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  cat "$log" >&2
  echo "FAIL: the host did not start serving gRPC" >&2
  exit 1
fi
head -n 1 "$log"
python3 - "$port" <<'EOF'
"""ModelInfer over gRPC to the C++ host vs the Python engine in-process, bit for bit."""
import sys

import numpy as np
import tritonclient.grpc as tc

import inferline as il
from inferline.demo import demo_model

sys.path.insert(0, "csrc/examples/host")
from export_demo import test_inputs  # the rows export_demo.py wrote into the demo file

config, mlp = demo_model()
x, _ = test_inputs(force_synthetic=False)
with il.Engine() as engine:
    engine.load(config, mlp)
    expected = engine.infer(config.name, {"pixels": x})

client = tc.InferenceServerClient(f"127.0.0.1:{sys.argv[1]}")
assert client.is_server_live() and client.is_server_ready()
checks = [(i, i + 1) for i in range(0, 40, 5)] + [(100, 108)]  # single rows and one batch of 8
for lo, hi in checks:
    pixels = tc.InferInput("pixels", [hi - lo, x.shape[1]], "FP32")
    pixels.set_data_from_numpy(x[lo:hi])
    result = client.infer(config.name, [pixels], request_id=f"rows-{lo}-{hi}")
    response = result.get_response()
    assert response.id == f"rows-{lo}-{hi}", response.id
    assert (response.model_name, response.model_version) == (config.name, str(config.version))
    assert response.parameters["routed_to"].string_param == f"{config.name}:{config.version}"
    label = result.as_numpy("label").reshape(-1)
    np.testing.assert_array_equal(label, np.asarray(expected["label"][lo:hi]).reshape(-1))
    logits = result.as_numpy("logits")
    assert logits.tobytes() == np.ascontiguousarray(expected["logits"][lo:hi], dtype=np.float32).tobytes()
client.close()
print(f"gRPC answers identical to the Python engine's: {len(checks)} requests, "
      f"{sum(hi - lo for lo, hi in checks)} rows (labels and logits, bit for bit)")
EOF
kill -TERM "$host_pid"
for _ in $(seq 200); do  # up to 20 s to stop
  kill -0 "$host_pid" 2>/dev/null || break
  sleep 0.1
done
rc=0
wait "$host_pid" || rc=$?
host_pid=""
tail -n +2 "$log"
if [ "$rc" -ne 0 ]; then
  echo "FAIL: the host exited with status $rc after SIGTERM (expected 0)" >&2
  exit 1
fi
echo "host stopped on SIGTERM with status 0"
