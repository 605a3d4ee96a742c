"""The default batching delay against the old 5 ms, in the same run: digits-mlp's bare model.onnx
pushed as is (BatchingConfig's default max_queue_delay_us) and with max_queue_delay_us 5000, each
served by `inferline serve` (1 worker) and driven by `inferline bench` at 500 req/s (open loop).

    python3 bench/server/default_delay.py [--rounds N]

Prints each run's inferline bench JSON (latency percentiles, server CPU per request)."""
import json, os, shutil, subprocess, sys, tempfile
sys.path.insert(0, "/work/main/bench/server")
import bench_grpc as B
from inferline.demo_models import demo_package_path
from inferline.models.service import open_registry, push

def repo(delay):
    r = tempfile.mkdtemp(prefix="delay-")
    reg = open_registry(r)
    push(reg, demo_package_path("digits-logreg"))
    if delay is None:
        push(reg, os.path.join(demo_package_path("digits-mlp"), "model.onnx"), name="digits-mlp")
    else:
        pkg = tempfile.mkdtemp(prefix="pkg-")
        shutil.copy(os.path.join(demo_package_path("digits-mlp"), "model.onnx"), pkg)
        cfg = {"name": "digits-mlp", "inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 64]}],
               "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]},
                           {"name": "label", "dtype": "int64", "shape": [-1, 1]}],
               "backend": {"name": "onnxruntime"}, "batching": {"max_batch_size": 32, "max_queue_delay_us": delay}}
        json.dump(cfg, open(os.path.join(pkg, "model.json"), "w"))
        push(reg, pkg)
    reg.close()
    return r

def main():
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 1
    rows = []
    for rnd in range(rounds):
        for label, delay in (("default (1 ms)", None), ("5 ms (old default)", 5000)):
            proc, port = B.start_inferline(1, repo(delay))
            try:
                out = subprocess.run(["inferline", "bench", "digits-mlp", "--url", f"127.0.0.1:{port}", "--rate", "500",
                                      "--warmup", "1", "--duration", "4", "--server-pid", str(proc.pid), "--json"],
                                     capture_output=True, text=True, timeout=120)
                d = json.loads(out.stdout)
                rows.append((rnd, label, d))
                print(rnd, label, json.dumps({k: d[k] for k in ("throughput_rps", "latency_ms", "server_cpu_us_per_request", "client_cpu_us_per_request")}), flush=True)
            finally:
                proc.terminate(); proc.wait()

if __name__ == "__main__":
    main()
