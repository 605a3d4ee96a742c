#!/usr/bin/env bash
# The README's first command, checked end to end in the active Python environment (CI gives it a
# fresh virtual environment): its install part as written (`bash tools/install.sh`: the native gRPC
# frontend's apt packages, then `pip install .`), then `inferline serve` with a fresh HOME (so the
# default repository is seeded from the shipped demo models); the banner must say that the native
# frontend serves gRPC; one inference on `digits-mlp` over REST (curl, the README's JSON body) and
# over gRPC, then SIGTERM and a clean exit 0.
# Ports are the README's defaults unless INFERLINE_HTTP_PORT / INFERLINE_GRPC_PORT say otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

http_port="${INFERLINE_HTTP_PORT:-8000}"
grpc_port="${INFERLINE_GRPC_PORT:-8001}"

# The first sh block under "On a fresh machine": "<install> && inferline serve".
first="$(python3 - <<'PY'
import re
text = open("README.md", encoding="utf-8").read()
section = text.split("## On a fresh machine", 1)[1]
print(re.search(r"```sh\n(.*?)\n```", section, re.S).group(1).strip())
PY
)"
install="${first% && inferline serve}"
if [ "$install" = "$first" ] || [ -z "$install" ]; then
  echo "the README's first command is not '<install> && inferline serve': $first"; exit 1
fi
echo "== $install"
bash -c "$install"

home="$(mktemp -d /tmp/inferline-home.XXXXXX)"
log="$home/serve.log"
echo "== inferline serve (HOME=$home)"
HOME="$home" inferline serve >"$log" 2>&1 &
pid=$!
cleanup() { kill -9 "$pid" 2>/dev/null || true; rm -rf "$home"; }
trap cleanup EXIT

# Ready = the health route answers and this server's banner names digits-mlp (the banner is
# printed just after the routes open, so both are awaited).
for _ in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$http_port/v2/health/ready" >/dev/null \
     && grep -q "models ready: .*digits-mlp" "$log"; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "inferline serve exited early:"; cat "$log"; exit 1; fi
  sleep 0.5
done
grep -q "models ready: .*digits-mlp" "$log" || { echo "no ready banner naming digits-mlp:"; cat "$log"; exit 1; }
grep -q "gRPC 127.0.0.1:$grpc_port (native frontend)" "$log" \
  || { echo "the native gRPC frontend does not serve (the README's first command must give it):"; cat "$log"; exit 1; }
echo "gRPC frontend: native"

echo "== REST infer"
body='{"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": ['"$(python -c 'print(", ".join(["0"] * 64))')"']}]}'
answer="$(curl -sf -X POST -H 'Content-Type: application/json' -d "$body" \
  "http://127.0.0.1:$http_port/v2/models/digits-mlp/infer")"
echo "$answer" | python -c '
import json, sys
out = {o["name"]: o for o in json.load(sys.stdin)["outputs"]}
assert out["label"]["datatype"] == "INT64" and len(out["label"]["data"]) == 1, out
assert len(out["logits"]["data"]) == 10, out
print("REST answered label", out["label"]["data"][0])'

echo "== gRPC infer"
python - "$grpc_port" <<'PY'
import sys
import grpc
import numpy as np
from inferline.server.proto import inference_pb2 as pb

channel = grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}")
call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                           request_serializer=pb.ModelInferRequest.SerializeToString,
                           response_deserializer=pb.ModelInferResponse.FromString)
request = pb.ModelInferRequest(model_name="digits-mlp")
request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
request.raw_input_contents.append(np.zeros((1, 64), np.float32).tobytes())
response = call(request, timeout=30)
names = [o.name for o in response.outputs]
label = np.frombuffer(response.raw_output_contents[names.index("label")], np.int64)
assert response.model_name == "digits-mlp" and label.shape == (1,), response
print("gRPC answered label", int(label[0]), "from version", response.model_version)
PY

echo "== SIGTERM"
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
if [ "$status" -ne 0 ]; then echo "inferline serve exited $status after SIGTERM:"; cat "$log"; exit 1; fi
tail -n 3 "$log"
echo "serve smoke test: passed"
