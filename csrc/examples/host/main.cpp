// digits_host — an example C++ program that embeds inferline without Python.
//
//   digits_host digits_demo.bin [--passes N] [--future-threads N] [--callback-threads N]
//                               [--window N] [--instances N]
//
// It reads the demo dense MLP (`dense-demo`, untrained) exported by export_demo.py, serves it from an
// inferline::Engine with a C++ backend (dense_mlp.h) and the demo's tabular
// preprocessing and batching config, and pushes every test row through it
// `passes` times as concurrent single-row requests: some threads wait on
// futures (one request in flight each), others keep a window of requests in
// flight and are answered by callbacks. It prints throughput and latency
// percentiles (its own timing and the model's stats) and checks every answer
// against the Python engine's bit for bit. Exit status: 0 when every row
// matched, 1 on any mismatch or failed request, 2 on bad usage or input.
//
// With --serve it runs no load test: it serves the model over gRPC (KServe v2, the native frontend
// inferline/grpc_frontend.h) until SIGINT or SIGTERM; see serve_grpc.h.
#include <inferline/engine.h>
#include <inferline/version.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

#include "demo_file.h"
#include "dense_mlp.h"
#include "serve_grpc.h"

using namespace inferline;

namespace {

struct Options {
  std::string path;
  uint32_t passes = 400;          // each test row is sent this many times
  uint32_t future_threads = 4;    // closed loop: one future in flight each
  uint32_t callback_threads = 4;  // `window` callback requests in flight each
  uint32_t window = 32;
  uint32_t instances = 1;         // executors (the demo's config uses 1)
  std::string serve;              // --serve PORT | HOST:PORT: serve gRPC instead of the load test
};

bool ParseOptions(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    uint32_t* target = a == "--passes"             ? &o->passes
                       : a == "--future-threads"   ? &o->future_threads
                       : a == "--callback-threads" ? &o->callback_threads
                       : a == "--window"           ? &o->window
                       : a == "--instances"        ? &o->instances
                                                   : nullptr;
    if (a == "--serve" && i + 1 < argc) {
      o->serve = argv[++i];
    } else if (target != nullptr && i + 1 < argc) {
      *target = static_cast<uint32_t>(std::strtoul(argv[++i], nullptr, 10));
    } else if (target == nullptr && a.rfind("--", 0) != 0 && o->path.empty()) {
      o->path = a;
    } else {
      return false;
    }
  }
  return !o->path.empty() && o->instances > 0 && o->passes > 0 && o->window > 0 && o->future_threads + o->callback_threads > 0;
}

uint64_t NowNs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

// Compares each answer with the Python engine's, bit for bit. Thread-safe.
class Verifier {
 public:
  explicit Verifier(const DemoData& d) : d_(d), row_bad_(d.rows) {}

  void Check(uint64_t request, const InferResult& r) {
    const size_t row = static_cast<size_t>(request % d_.rows);
    answers_.fetch_add(1, std::memory_order_relaxed);
    if (!r.status.ok()) return Fail(row, "row " + std::to_string(row) + ": " + r.status.ToString());
    if (const char* why = Mismatch(row, r)) Fail(row, "row " + std::to_string(row) + ": " + why);
  }
  void Refused(uint64_t request, const Status& st) {
    answers_.fetch_add(1, std::memory_order_relaxed);
    Fail(static_cast<size_t>(request % d_.rows), "refused: " + st.ToString());
  }
  uint32_t rows_matching() const {
    uint32_t n = 0;
    for (const auto& bad : row_bad_) n += bad.load() ? 0 : 1;
    return n;
  }
  uint64_t answers() const { return answers_.load(); }
  uint64_t bad_answers() const { return bad_.load(); }
  std::string first_problem() {
    std::lock_guard<std::mutex> lock(mu_);
    return first_problem_;
  }

 private:
  // nullptr when the answer equals the Python engine's bit for bit, else what differs.
  const char* Mismatch(size_t row, const InferResult& r) const {
    const int64_t c = d_.classes;
    if (r.outputs.size() != 2) return "expected 2 outputs";
    const Tensor& logits = r.outputs[0];
    const Tensor& label = r.outputs[1];
    if (logits.dtype != DataType::kFloat32 || logits.shape != Shape{1, c}) return "bad logits tensor";
    if (label.dtype != DataType::kInt64 || label.shape != Shape{1, 1}) return "bad label tensor";
    if (std::memcmp(logits.data, d_.logits.data() + row * d_.classes, d_.classes * sizeof(float)) != 0) {
      return "logits differ from the Python engine's";
    }
    if (*static_cast<const int64_t*>(label.data) != d_.labels[row]) return "label differs from the Python engine's";
    return nullptr;
  }
  void Fail(size_t row, const std::string& what) {
    bad_.fetch_add(1, std::memory_order_relaxed);
    row_bad_[row].store(true);
    std::lock_guard<std::mutex> lock(mu_);
    if (first_problem_.empty()) first_problem_ = what;
  }

  const DemoData& d_;
  std::vector<std::atomic<bool>> row_bad_;
  std::atomic<uint64_t> answers_{0}, bad_{0};
  std::mutex mu_;
  std::string first_problem_;  // requires mu_
};

// Drives the load: request i sends test row i % rows; threads take the next i
// from a shared counter until rows * passes requests are sent.
class LoadDriver {
 public:
  LoadDriver(const DemoData& d, const Options& o, Verifier& v)
      : d_(d), opt_(o), verifier_(v), total_(uint64_t{d.rows} * o.passes), submit_ns_(total_), latency_ns_(total_) {}

  // Returns the wall time in seconds, from the first submit to the last answer.
  double Run(Engine& engine) {
    const uint64_t t0 = NowNs();
    std::vector<std::thread> threads;
    for (uint32_t t = 0; t < opt_.future_threads; ++t) threads.emplace_back([&] { FutureWorker(engine); });
    for (uint32_t t = 0; t < opt_.callback_threads; ++t) {
      lanes_.push_back(std::make_unique<Lane>(opt_.window));
      threads.emplace_back([&, lane = lanes_.back().get()] { CallbackWorker(engine, *lane); });
    }
    for (auto& th : threads) th.join();
    return static_cast<double>(NowNs() - t0) * 1e-9;
  }
  uint64_t total() const { return total_; }
  // Latency seen by the submitting side (ns), sorted.
  std::vector<uint64_t> SortedLatencies() const {
    std::vector<uint64_t> v = latency_ns_;
    std::sort(v.begin(), v.end());
    return v;
  }

 private:
  // One callback thread's sink and window. Owned by the driver, so it outlives
  // the engine's last Deliver into it (main shuts the engine down first).
  struct Lane {
    explicit Lane(uint32_t window) : slots(window), window(window) {}
    std::counting_semaphore<> slots;
    uint32_t window;
    std::unique_ptr<CallbackSink> sink;
  };

  InferRequest RequestFor(uint64_t i, CompletionSink* sink) const {
    const size_t row = static_cast<size_t>(i % d_.rows);
    InferRequest r;
    r.inputs = {TensorView{d_.inputs.data() + row * d_.features, DataType::kFloat32, Shape{1, d_.features}}};
    r.tag = i;
    r.sink = sink;
    return r;
  }

  void FutureWorker(Engine& engine) {
    for (uint64_t i; (i = next_.fetch_add(1)) < total_;) {
      submit_ns_[i] = NowNs();
      auto future = engine.SubmitForFuture(d_.model_name, d_.version, RequestFor(i, nullptr));
      if (!future.ok()) {
        verifier_.Refused(i, future.status());
        continue;
      }
      InferResult r = future->get();
      latency_ns_[i] = NowNs() - submit_ns_[i];
      verifier_.Check(i, r);
    }
  }

  void CallbackWorker(Engine& engine, Lane& lane) {
    // Runs on an executor thread, once per answer.
    lane.sink = std::make_unique<CallbackSink>([this, &lane](InferResult&& r) {
      latency_ns_[r.tag] = NowNs() - submit_ns_[r.tag];
      verifier_.Check(r.tag, r);
      lane.slots.release();
    });
    for (uint64_t i; (i = next_.fetch_add(1)) < total_;) {
      lane.slots.acquire();
      submit_ns_[i] = NowNs();
      Status st = engine.Submit(d_.model_name, d_.version, RequestFor(i, lane.sink.get()));
      if (!st.ok()) {
        verifier_.Refused(i, st);
        lane.slots.release();
      }
    }
    for (uint32_t k = 0; k < lane.window; ++k) lane.slots.acquire();  // every answer is in
  }

  const DemoData& d_;
  const Options& opt_;
  Verifier& verifier_;
  const uint64_t total_;
  std::atomic<uint64_t> next_{0};
  std::vector<uint64_t> submit_ns_, latency_ns_;  // per request; each index written by one thread at a time
  std::vector<std::unique_ptr<Lane>> lanes_;
};

double PercentileMs(const std::vector<uint64_t>& sorted_ns, double q) {
  if (sorted_ns.empty()) return 0.0;
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted_ns.size())));
  return static_cast<double>(sorted_ns[std::clamp<size_t>(rank, 1, sorted_ns.size()) - 1]) * 1e-6;
}

void PrintReport(const Options& o, const LoadDriver& driver, double seconds, const StatsSnapshot& s) {
  std::vector<uint64_t> lat = driver.SortedLatencies();
  std::printf("  load         %llu single-row requests (%u passes) from %u threads: %u with futures (1 in flight "
              "each), %u with callbacks (%u in flight each)\n",
              static_cast<unsigned long long>(driver.total()), o.passes, o.future_threads + o.callback_threads,
              o.future_threads, o.callback_threads, o.window);
  std::printf("  throughput   %.0f requests/s (%.3f s)\n", static_cast<double>(driver.total()) / seconds, seconds);
  std::printf("  latency      host-measured p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  p99.9 %.3f ms  max %.3f ms\n",
              PercentileMs(lat, 0.50), PercentileMs(lat, 0.90), PercentileMs(lat, 0.99), PercentileMs(lat, 0.999),
              PercentileMs(lat, 1.0));
  std::printf("  core stats   end-to-end p50 %llu us  p99 %llu us  p99.9 %llu us; queue p99 %llu us; "
              "compute p50 %llu us  p99 %llu us\n",
              static_cast<unsigned long long>(s.end_to_end_us.Percentile(0.5)),
              static_cast<unsigned long long>(s.end_to_end_us.Percentile(0.99)),
              static_cast<unsigned long long>(s.end_to_end_us.Percentile(0.999)),
              static_cast<unsigned long long>(s.queue_us.Percentile(0.99)),
              static_cast<unsigned long long>(s.compute_us.Percentile(0.5)),
              static_cast<unsigned long long>(s.compute_us.Percentile(0.99)));
  std::printf("  batches      %llu (mean %.1f rows, fill %.0f%% of %u); errors %llu, rejected %llu, "
              "cancelled %llu, deadline missed %llu\n",
              static_cast<unsigned long long>(s.batches), s.mean_batch_size(), 100.0 * s.fill_ratio(),
              s.max_batch_size, static_cast<unsigned long long>(s.errors),
              static_cast<unsigned long long>(s.rejected), static_cast<unsigned long long>(s.cancelled),
              static_cast<unsigned long long>(s.deadline_missed));
}

int Serve(const Options& opt, const DemoData& data) {
  std::printf("inferline %s C++ host (no Python): model '%s' version %lld, dense MLP %u->%u->ReLU->%u float32\n",
              INFERLINE_VERSION_STRING, data.model_name.c_str(), static_cast<long long>(data.version),
              data.features, data.hidden, data.classes);
  std::printf("  test inputs  %u rows: %s\n", data.rows, data.source.c_str());
  Engine engine;
  auto backend = std::make_shared<DenseMlpBackend>(data.w1, data.w2, data.features, data.hidden, data.classes);
  if (Status st = engine.Load(DemoConfig(data, opt.instances), backend); !st.ok()) {
    std::fprintf(stderr, "load failed: %s\n", st.ToString().c_str());
    return 2;
  }
  Verifier verifier(data);
  LoadDriver driver(data, opt, verifier);
  const double seconds = driver.Run(engine);
  auto stats = engine.Stats(data.model_name, data.version);
  engine.Shutdown(/*drain=*/true);  // before `driver` goes: its sinks must outlive every answer
  if (!stats.ok()) return std::fprintf(stderr, "stats: %s\n", stats.status().ToString().c_str()), 1;
  PrintReport(opt, driver, seconds, stats.value());

  const uint32_t matching = verifier.rows_matching();
  std::printf("bitwise match: %u/%u rows (%llu/%llu answers identical to the Python engine's)\n", matching,
              data.rows, static_cast<unsigned long long>(verifier.answers() - verifier.bad_answers()),
              static_cast<unsigned long long>(driver.total()));
  const bool ok = matching == data.rows && verifier.bad_answers() == 0 && verifier.answers() == driver.total();
  if (!ok) std::fprintf(stderr, "MISMATCH: first problem: %s\n", verifier.first_problem().c_str());
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!ParseOptions(argc, argv, &opt)) {
    std::fprintf(stderr,
                 "usage: %s DEMO_FILE [--passes N] [--future-threads N] [--callback-threads N] [--window N] "
                 "[--instances N]\n       %s DEMO_FILE --serve PORT|HOST:PORT [--instances N]\n"
                 "  (make DEMO_FILE with csrc/examples/host/export_demo.py)\n",
                 argv[0], argv[0]);
    return 2;
  }
  auto data = ReadDemoFile(opt.path);
  if (!data.ok()) {
    std::fprintf(stderr, "%s\n", data.status().ToString().c_str());
    return 2;
  }
  if (!opt.serve.empty()) return ServeGrpc(data.value(), opt.serve, opt.instances);
  return Serve(opt, data.value());
}
