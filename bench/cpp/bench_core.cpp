// bench/cpp/bench_core.cpp — micro-benchmarks of the native core, one line per configuration.
//
//   queue_push_pop_uncontended   MpmcQueue try_push + try_pop on one thread (ns per pair, best run)
//   queue_spsc_contended         1 producer thread + 1 consumer thread through one queue (items/s)
//   model_echo                   Model + native EchoBackend, float32 [-1, 16] single-row requests
//                                from P producer threads, answers counted by a CallbackSink:
//                                req/s, mean batch size, p50/p99 end-to-end from Model::Stats().
//
// Usage: bench_core [--quick]      (--quick: about 3 s in total; default about 10 s)
// Numbers from a shared machine are noisy: compare lines of the same run, not runs.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "inferline/backend.h"
#include "inferline/completion.h"
#include "inferline/model.h"
#include "inferline/mpmc_queue.h"

namespace {

using inferline::MpmcQueue;
using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Keeps the compiler from dropping a computed value.
template <class T>
void DoNotOptimize(const T& v) {
  asm volatile("" : : "r,m"(v) : "memory");
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "bench_core: %s\n", what.c_str());
  std::exit(1);
}

// ---- queue --------------------------------------------------------------------

void BenchQueueUncontended(bool quick) {
  constexpr size_t kOps = 1 << 20;
  const int runs = quick ? 3 : 7;
  MpmcQueue<uint64_t> q(1024);
  double best_ns = 1e30;
  for (int r = 0; r < runs; ++r) {
    uint64_t sum = 0, out = 0;
    const auto start = Clock::now();
    for (uint64_t i = 0; i < kOps; ++i) {
      if (!q.try_push(i) || !q.try_pop(out)) Die("uncontended queue refused an operation");
      sum += out;
    }
    const double ns = SecondsSince(start) * 1e9 / kOps;
    DoNotOptimize(sum);
    if (sum != kOps * (kOps - 1) / 2) Die("uncontended queue lost items");
    best_ns = std::min(best_ns, ns);
  }
  std::printf("queue_push_pop_uncontended  ns_per_op=%.1f  (one push + one pop, best of %d x %zu)\n", best_ns,
              runs, kOps);
}

// On a failed try, spin a little, then yield: when both threads share one core
// (or the machine is oversubscribed) the peer needs the CPU to make progress.
void BackOff(uint32_t& failures) {
  if (++failures % 64 == 0) std::this_thread::yield();
}

void BenchQueueContended(double seconds) {
  MpmcQueue<uint64_t> q(1024);
  std::atomic<uint64_t> produced{UINT64_MAX};  // set when the producer stops
  uint64_t consumed_sum = 0;
  const auto start = Clock::now();
  std::thread consumer([&] {
    uint64_t v = 0, sum = 0, n = 0;
    uint32_t failures = 0;
    while (n < produced.load(std::memory_order_acquire)) {
      if (q.try_pop(v)) {
        sum += v;
        ++n;
      } else {
        BackOff(failures);
      }
    }
    consumed_sum = sum;
  });
  const auto stop_at = start + std::chrono::duration<double>(seconds);
  uint64_t items = 0;
  uint32_t failures = 0;
  while ((items & 1023) != 0 || Clock::now() < stop_at) {
    if (q.try_push(items)) {
      ++items;
    } else {
      BackOff(failures);
    }
  }
  produced.store(items, std::memory_order_release);
  consumer.join();
  const double s = SecondsSince(start);
  if (consumed_sum != items * (items - 1) / 2) Die("contended queue lost items");
  std::printf("queue_spsc_contended  producers=1 consumers=1 capacity=1024  ops_per_s=%.3g  (items=%llu)\n",
              items / s, static_cast<unsigned long long>(items));
}

// ---- model --------------------------------------------------------------------

constexpr int64_t kFeatures = 16;
constexpr uint32_t kInFlightPerProducer = 4096;

struct ModelCase {
  int producers;
  uint32_t max_batch_size;
  uint64_t max_queue_delay_us;
};

// One producer's rows: a slot is owned by the engine from Submit until its
// answer, then goes back to `free_slots`. The free list is the in-flight bound.
struct Producer {
  std::vector<float> rows = std::vector<float>(kInFlightPerProducer * kFeatures, 0.5f);
  MpmcQueue<uint32_t> free_slots{kInFlightPerProducer};
  uint64_t submitted = 0;
  uint64_t retries = 0;  // RESOURCE_EXHAUSTED answers to Submit

  Producer() {
    for (uint32_t s = 0; s < kInFlightPerProducer; ++s) {
      if (!free_slots.try_push(s)) Die("free-slot list too small");
    }
  }
};

std::unique_ptr<inferline::Model> MakeEchoModel(const ModelCase& c) {
  using inferline::DataType;
  inferline::ModelConfig config;
  config.name = "bench_echo";
  config.inputs = {{"x", DataType::kFloat32, {-1, kFeatures}}};
  config.outputs = {{"y", DataType::kFloat32, {-1, kFeatures}}};
  config.batching.max_batch_size = c.max_batch_size;
  config.batching.max_queue_delay_us = c.max_queue_delay_us;
  config.instances = 1;
  config.queue_capacity = 65536;
  auto backend = std::make_shared<inferline::EchoBackend>(std::vector<std::string>{"y"});
  auto made = inferline::Model::Create(std::move(config), std::move(backend));
  if (!made.ok()) Die(made.status().ToString());
  return std::move(made).value();
}

void Produce(inferline::Model& model, inferline::CompletionSink* sink, Producer& me, uint32_t index,
             const std::atomic<bool>& stop) {
  inferline::InferRequest req;
  req.inputs = {inferline::TensorView{nullptr, inferline::DataType::kFloat32, {1, kFeatures}}};
  req.sink = sink;
  while (!stop.load(std::memory_order_relaxed)) {
    uint32_t slot;
    if (!me.free_slots.try_pop(slot)) {  // kInFlightPerProducer requests unanswered
      std::this_thread::yield();
      continue;
    }
    req.inputs[0].data = &me.rows[size_t{slot} * kFeatures];
    req.tag = (uint64_t{index} << 32) | slot;
    for (;;) {
      inferline::Status st = model.Submit(req);
      if (st.ok()) break;
      if (st.code() != inferline::StatusCode::kResourceExhausted) Die(st.ToString());
      ++me.retries;
      std::this_thread::yield();
    }
    ++me.submitted;
  }
}

void BenchModel(const ModelCase& c, double seconds) {
  std::vector<std::unique_ptr<Producer>> producers;
  for (int p = 0; p < c.producers; ++p) producers.push_back(std::make_unique<Producer>());
  std::atomic<uint64_t> answered{0}, failed{0};
  // Runs on the executor thread, once per answer.
  inferline::CallbackSink sink([&](inferline::InferResult&& r) {
    if (!r.status.ok()) failed.fetch_add(1, std::memory_order_relaxed);
    Producer& owner = *producers[r.tag >> 32];
    if (!owner.free_slots.try_push(static_cast<uint32_t>(r.tag))) Die("slot returned twice");
    answered.fetch_add(1, std::memory_order_release);
  });
  auto model = MakeEchoModel(c);  // declared after the sink: destroyed (drained) first

  std::atomic<bool> stop{false};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int p = 0; p < c.producers; ++p) {
    threads.emplace_back(Produce, std::ref(*model), &sink, std::ref(*producers[p]), p, std::cref(stop));
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true);
  for (auto& t : threads) t.join();
  uint64_t submitted = 0, retries = 0;
  for (const auto& p : producers) submitted += p->submitted, retries += p->retries;
  while (answered.load(std::memory_order_acquire) < submitted) std::this_thread::yield();
  const double s = SecondsSince(start);

  const inferline::StatsSnapshot st = model->Stats();
  if (failed.load() != 0) Die(std::to_string(failed.load()) + " requests failed");
  std::printf("model_echo  producers=%d max_batch=%u delay_us=%llu  req_per_s=%.3g  mean_batch=%.1f  "
              "p50_us=%llu  p99_us=%llu  (requests=%llu retries=%llu)\n",
              c.producers, c.max_batch_size, static_cast<unsigned long long>(c.max_queue_delay_us),
              submitted / s, st.mean_batch_size(),
              static_cast<unsigned long long>(st.end_to_end_us.Percentile(0.50)),
              static_cast<unsigned long long>(st.end_to_end_us.Percentile(0.99)),
              static_cast<unsigned long long>(submitted), static_cast<unsigned long long>(retries));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
      return 2;
    }
  }
  BenchQueueUncontended(quick);
  BenchQueueContended(quick ? 0.3 : 1.0);
  const double seconds = quick ? 0.4 : 1.5;
  const ModelCase cases[] = {
      {1, 32, 100}, {2, 32, 100}, {2, 32, 5000},  // batching
      {1, 1, 100},  {2, 1, 100},                  // batch size 1: what batching buys
  };
  for (const ModelCase& c : cases) BenchModel(c, seconds);
  return 0;
}
