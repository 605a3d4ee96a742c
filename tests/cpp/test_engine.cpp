// Tests for inferline/engine.h (the C++ host API): loading and finding model
// versions, NOT_FOUND / ALREADY_EXISTS, futures and callbacks from many threads,
// Unload and Shutdown answering every request, stats, load/unload churn and
// hot-reload swaps (Replace) under concurrent submits. Also the generated
// inferline/version.h.
#include "inferline/engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "inferline/version.h"
#include "test_util.h"

namespace inferline {
namespace {

using testing::CollectSink;
using testing::FloatView;
using testing::Gate;
using testing::kWaitTimeout;
using testing::OpenOnExit;
using testing::Scaled;
using testing::ToFloats;

constexpr int64_t kF = 4;  // features per row

bool Contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// y = x * 2 + 1 (float32 [rows, kF] -> 'y'); optionally waits at a gate first.
class AffineBackend final : public Backend {
 public:
  explicit AffineBackend(Gate* gate = nullptr) : gate_(gate) {}
  Status Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) override {
    entered_.fetch_add(1, std::memory_order_acq_rel);
    if (gate_ != nullptr && !gate_->Pass()) return Internal("gate stayed closed");
    const Tensor& x = inputs.at(0).tensor;
    Tensor y = Tensor::Allocate(DataType::kFloat32, x.shape);
    const auto* in = static_cast<const float*>(x.data);
    auto* out = static_cast<float*>(y.data);
    for (int64_t i = 0; i < x.shape.NumElements(); ++i) out[i] = in[i] * 2.0f + 1.0f;
    outputs->push_back(NamedTensor{"y", std::move(y)});
    return Status::Ok();
  }
  int entered() const { return entered_.load(std::memory_order_acquire); }

 private:
  Gate* gate_;
  std::atomic<int> entered_{0};
};

ModelConfig Config(const std::string& name, int64_t version, uint32_t instances = 1) {
  ModelConfig c;
  c.name = name;
  c.version = version;
  c.inputs = {TensorSpec{"x", DataType::kFloat32, Shape{-1, kF}}};
  c.outputs = {TensorSpec{"y", DataType::kFloat32, Shape{-1, kF}}};
  c.batching.max_batch_size = 8;
  c.batching.max_queue_delay_us = 500;
  c.instances = instances;
  return c;
}

// One row per tag: x = [tag, tag + 0.5, -tag, 7].
std::vector<float> Row(uint64_t tag) {
  float t = static_cast<float>(tag);
  return {t, t + 0.5f, -t, 7.0f};
}

InferRequest Request(const std::vector<float>& row, uint64_t tag, CompletionSink* sink = nullptr) {
  InferRequest r;
  r.inputs = {FloatView(row, 1, kF)};
  r.tag = tag;
  r.sink = sink;
  return r;
}

void ExpectComputed(const InferResult& r, const std::vector<float>& row) {
  ASSERT_TRUE(r.status.ok()) << "tag " << r.tag << ": " << r.status.ToString();
  ASSERT_EQ(r.outputs.size(), 1u);
  std::vector<float> y = ToFloats(r.outputs[0]);
  ASSERT_EQ(y.size(), row.size());
  for (size_t i = 0; i < row.size(); ++i) EXPECT_EQ(y[i], row[i] * 2.0f + 1.0f) << "tag " << r.tag;
}

bool Ready(std::future<InferResult>& f) { return f.wait_for(kWaitTimeout) == std::future_status::ready; }

// Waits (bounded) until `pred` holds.
template <class Pred>
bool Eventually(Pred pred) {
  auto until = std::chrono::steady_clock::now() + kWaitTimeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Opens a gate and joins a thread when leaving scope, so a failed ASSERT never
// leaves a joinable thread behind or an engine waiting on a closed gate.
class FinishOnExit {
 public:
  FinishOnExit(Gate& gate, std::thread& thread) : gate_(gate), thread_(thread) {}
  ~FinishOnExit() {
    gate_.Open();
    if (thread_.joinable()) thread_.join();
  }
  FinishOnExit(const FinishOnExit&) = delete;
  FinishOnExit& operator=(const FinishOnExit&) = delete;

 private:
  Gate& gate_;
  std::thread& thread_;
};

TEST(EngineVersion, HeaderMatchesTheProjectVersion) {
  std::string expect = std::to_string(INFERLINE_VERSION_MAJOR) + "." + std::to_string(INFERLINE_VERSION_MINOR) +
                       "." + std::to_string(INFERLINE_VERSION_PATCH);
  EXPECT_EQ(std::string(INFERLINE_VERSION_STRING), expect);
  EXPECT_EQ(std::string(kVersionString), expect);
  EXPECT_EQ(kVersionNumber,
            INFERLINE_VERSION_MAJOR * 10000 + INFERLINE_VERSION_MINOR * 100 + INFERLINE_VERSION_PATCH);
}

TEST(Engine, LoadFindListUnload) {
  Engine engine;
  ASSERT_TRUE(engine.Load(Config("a", 1), std::make_shared<AffineBackend>()).ok());
  ASSERT_TRUE(engine.Load(Config("a", 2), std::make_shared<AffineBackend>()).ok());
  ASSERT_TRUE(engine.Load(Config("b", 1), std::make_shared<AffineBackend>()).ok());

  ASSERT_NE(engine.Find("a"), nullptr);
  EXPECT_EQ(engine.Find("a")->config().version, 2);  // kLatest
  EXPECT_EQ(engine.Find("a", 1)->config().version, 1);
  EXPECT_EQ(engine.Find("a", 3), nullptr);
  EXPECT_EQ(engine.Find("c"), nullptr);

  auto list = engine.List();
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].name, "a");
  EXPECT_EQ(list[0].version, 1);
  EXPECT_EQ(list[1].version, 2);
  EXPECT_EQ(list[2].name, "b");

  auto missing = engine.Get("a", 3);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(missing.status().message(), "model 'a' version 3 is not loaded (versions loaded: 1, 2)"))
      << missing.status().message();
  auto unknown = engine.Get("c");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(unknown.status().message(), "models loaded: 'a', 'b'")) << unknown.status().message();

  ASSERT_TRUE(engine.Unload("a", Engine::kLatest).ok());
  EXPECT_EQ(engine.Find("a")->config().version, 1);
  EXPECT_EQ(engine.Unload("a", 5).code(), StatusCode::kNotFound);
  ASSERT_TRUE(engine.Unload("a", 1, /*drain=*/false).ok());
  EXPECT_EQ(engine.Find("a"), nullptr);
  EXPECT_EQ(engine.Unload("a", Engine::kLatest).code(), StatusCode::kNotFound);
  ASSERT_EQ(engine.List().size(), 1u);
  EXPECT_EQ(engine.List()[0].name, "b");
}

TEST(Engine, LoadRefusesDuplicatesAndBadConfigs) {
  Engine engine;
  auto first = std::make_shared<AffineBackend>();
  ASSERT_TRUE(engine.Load(Config("m", 4), first).ok());
  Status dup = engine.Load(Config("m", 4), std::make_shared<AffineBackend>());
  EXPECT_EQ(dup.code(), StatusCode::kAlreadyExists);
  EXPECT_TRUE(Contains(dup.message(), "model 'm' version 4")) << dup.message();

  Status zero = engine.Load(Config("m", Engine::kLatest), std::make_shared<AffineBackend>());
  EXPECT_EQ(zero.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(zero.message(), "version must be >= 1")) << zero.message();

  ModelConfig no_inputs = Config("m", 5);
  no_inputs.inputs.clear();
  Status bad = engine.Load(no_inputs, std::make_shared<AffineBackend>());
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(bad.message(), "model 'm' version 5")) << bad.message();
  EXPECT_EQ(engine.Load(Config("m", 6), nullptr).code(), StatusCode::kInvalidArgument);

  // The original version still serves, with the original backend.
  ASSERT_EQ(engine.List().size(), 1u);
  std::vector<float> row = Row(3);
  auto f = engine.SubmitForFuture("m", 4, Request(row, 3));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_TRUE(Ready(*f));
  ExpectComputed(f->get(), row);
  EXPECT_EQ(first->entered(), 1);
}

TEST(Engine, SubmitRefusals) {
  CollectSink sink;
  Engine engine;
  ASSERT_TRUE(engine.Load(Config("m", 1), std::make_shared<AffineBackend>()).ok());
  std::vector<float> row = Row(1);

  EXPECT_EQ(engine.Submit("nope", Engine::kLatest, Request(row, 1, &sink)).code(), StatusCode::kNotFound);
  EXPECT_EQ(engine.Submit("m", 2, Request(row, 1, &sink)).code(), StatusCode::kNotFound);
  auto f = engine.SubmitForFuture("nope", 1, Request(row, 1));
  EXPECT_EQ(f.status().code(), StatusCode::kNotFound);

  auto with_sink = engine.SubmitForFuture("m", 1, Request(row, 1, &sink));
  EXPECT_EQ(with_sink.status().code(), StatusCode::kInvalidArgument);

  // Refused by the model (wrong shape): no future, and the one-shot sink is freed (ASan checks).
  std::vector<float> wide(kF + 1, 1.0f);
  InferRequest bad;
  bad.inputs = {FloatView(wide, 1, kF + 1)};
  auto refused = engine.SubmitForFuture("m", 1, bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(refused.status().message(), "model 'm' version 1 input 'x'")) << refused.status().message();
  EXPECT_EQ(sink.count(), 0u);
}

TEST(PromiseSink, AbandonedSinkBreaksItsPromise) {
  std::future<InferResult> f;
  PromiseSink* sink = PromiseSink::Create(&f);
  ASSERT_NE(sink, nullptr);
  sink->Abandon();
  ASSERT_TRUE(Ready(f));
  EXPECT_THROW(f.get(), std::future_error);
}

TEST(Engine, FuturesAndCallbacksFromManyThreads) {
  constexpr int kThreads = 8;
  const int per_thread = Scaled(300);
  constexpr size_t kWindow = 16;  // futures in flight per thread, so batches can form
  std::vector<std::vector<float>> rows(static_cast<size_t>(kThreads * per_thread));
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = Row(i);
  CollectSink callbacks;  // odd threads answer through a shared sink
  Engine engine;          // declared after the payloads and the sink: it stops first
  ASSERT_TRUE(engine.Load(Config("m", 1, /*instances=*/2), std::make_shared<AffineBackend>()).ok());
  std::atomic<int> failures{0};

  auto worker = [&](int t) {
    std::deque<std::pair<uint64_t, std::future<InferResult>>> inflight;
    auto settle = [&] {
      auto& [tag, f] = inflight.front();
      if (!Ready(f)) {
        failures.fetch_add(1);
      } else {
        InferResult r = f.get();
        if (r.tag != tag) failures.fetch_add(1);
        ExpectComputed(r, rows[tag]);
      }
      inflight.pop_front();
    };
    for (int k = 0; k < per_thread; ++k) {
      uint64_t tag = static_cast<uint64_t>(t * per_thread + k);
      if (t % 2 == 1) {
        if (!engine.Submit("m", Engine::kLatest, Request(rows[tag], tag, &callbacks)).ok()) failures.fetch_add(1);
        continue;
      }
      auto f = engine.SubmitForFuture("m", 1, Request(rows[tag], tag));
      if (!f.ok()) {
        failures.fetch_add(1);
        continue;
      }
      inflight.emplace_back(tag, std::move(f).value());
      if (inflight.size() >= kWindow) settle();
    }
    while (!inflight.empty()) settle();
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();

  EXPECT_EQ(failures.load(), 0);
  const size_t by_callback = static_cast<size_t>(kThreads / 2 * per_thread);
  ASSERT_TRUE(callbacks.WaitFor(by_callback));
  auto answers = callbacks.ByTag();
  EXPECT_EQ(answers.size(), by_callback);
  for (const auto& [tag, r] : answers) ExpectComputed(r, rows[tag]);

  auto stats = engine.Stats("m");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->requests, rows.size());
  EXPECT_EQ(stats->rows, rows.size());
  EXPECT_EQ(stats->end_to_end_us.count, rows.size());
  EXPECT_EQ(stats->errors + stats->rejected + stats->cancelled + stats->deadline_missed, 0u);
  uint64_t batches = 0, batched_rows = 0;
  for (size_t n = 0; n < stats->batch_size_counts.size(); ++n) {
    batches += stats->batch_size_counts[n];
    batched_rows += n * stats->batch_size_counts[n];
  }
  EXPECT_EQ(batches, stats->batches);
  EXPECT_EQ(batched_rows, rows.size());
  EXPECT_EQ(engine.Stats("nope").status().code(), StatusCode::kNotFound);
}

// Holds the only executor at a closed gate, queues `n` futures and `n` callback
// requests behind it, and shuts down with `drain`.
void ShutdownAnswersEverything(bool drain) {
  Gate gate(/*open=*/false);
  auto backend = std::make_shared<AffineBackend>(&gate);
  const int n = Scaled(40, 2);
  std::vector<std::vector<float>> rows(static_cast<size_t>(2 * n));
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = Row(i);
  CollectSink sink;  // sink and payloads before the engine: they outlive it
  Engine engine;
  OpenOnExit open_on_exit(gate);  // after the engine: opens before the engine's destructor waits
  ASSERT_TRUE(engine.Load(Config("m", 1), backend).ok());
  std::vector<std::future<InferResult>> futures;
  auto first = engine.SubmitForFuture("m", 1, Request(rows[0], 0));
  ASSERT_TRUE(first.ok());
  futures.push_back(std::move(first).value());
  ASSERT_TRUE(Eventually([&] { return backend->entered() >= 1; }));  // batch {0} is held at the gate
  for (int i = 1; i < n; ++i) {
    auto f = engine.SubmitForFuture("m", 1, Request(rows[i], i));
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    futures.push_back(std::move(f).value());
  }
  for (int i = n; i < 2 * n; ++i) ASSERT_TRUE(engine.Submit("m", 1, Request(rows[i], i, &sink)).ok());

  std::shared_ptr<Model> model = engine.Find("m");
  std::thread stopper([&] { engine.Shutdown(drain); });
  FinishOnExit finish(gate, stopper);
  // Let the held batch finish only once the model itself is stopping. (An empty
  // request is refused as UNAVAILABLE while stopping, else INVALID_ARGUMENT: a
  // probe that never queues anything.)
  ASSERT_TRUE(Eventually([&] { return model->Submit(InferRequest{}).code() == StatusCode::kUnavailable; }));
  EXPECT_EQ(engine.Submit("m", 1, Request(rows[0], 0, &sink)).code(), StatusCode::kUnavailable);
  gate.Open();
  stopper.join();  // (FinishOnExit then has nothing left to do)

  size_t computed = 0, cancelled = 0;
  auto count = [&](const InferResult& r) {
    if (r.status.ok()) {
      ++computed;
      ExpectComputed(r, rows[r.tag]);
    } else {
      EXPECT_EQ(r.status.code(), StatusCode::kCancelled) << r.status.ToString();
      EXPECT_TRUE(Contains(r.status.message(), "model 'm' version 1")) << r.status.message();
      ++cancelled;
    }
  };
  for (auto& f : futures) {
    ASSERT_EQ(f.wait_for(std::chrono::seconds(0)), std::future_status::ready);  // answered before Shutdown returned
    count(f.get());
  }
  EXPECT_EQ(sink.count(), static_cast<size_t>(n));  // each exactly once (ByTag checks)
  for (const auto& [tag, r] : sink.ByTag()) count(r);
  EXPECT_EQ(computed + cancelled, static_cast<size_t>(2 * n));
  if (drain) {
    EXPECT_EQ(cancelled, 0u);
  } else {
    EXPECT_EQ(computed, 1u);  // only the batch already running when Shutdown began
  }
}

TEST(Engine, ShutdownWithoutDrainAnswersEveryRequest) { ShutdownAnswersEverything(false); }
TEST(Engine, ShutdownWithDrainComputesEveryRequest) { ShutdownAnswersEverything(true); }

TEST(Engine, AfterShutdownEverythingIsRefused) {
  CollectSink sink;
  std::vector<float> row = Row(1);
  Engine engine;
  ASSERT_TRUE(engine.Load(Config("m", 1), std::make_shared<AffineBackend>()).ok());
  std::shared_ptr<Model> held = engine.Find("m");
  engine.Shutdown();
  engine.Shutdown();  // idempotent
  EXPECT_EQ(engine.Load(Config("m", 2), std::make_shared<AffineBackend>()).code(), StatusCode::kUnavailable);
  EXPECT_EQ(engine.Submit("m", 1, Request(row, 1, &sink)).code(), StatusCode::kUnavailable);
  EXPECT_EQ(engine.SubmitForFuture("m", 1, Request(row, 1)).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(engine.Unload("m", 1).code(), StatusCode::kNotFound);
  EXPECT_TRUE(engine.List().empty());
  EXPECT_EQ(held->Submit(Request(row, 1, &sink)).code(), StatusCode::kUnavailable);  // a held model is stopped too
  EXPECT_EQ(sink.count(), 0u);
}

TEST(Engine, UnloadDrainsOneVersionWhileAnotherServes) {
  Gate gate(/*open=*/false);
  auto v1_backend = std::make_shared<AffineBackend>(&gate);
  std::vector<std::vector<float>> rows;
  for (uint64_t i = 0; i < 20; ++i) rows.push_back(Row(i));
  Engine engine;
  OpenOnExit open_on_exit(gate);
  ASSERT_TRUE(engine.Load(Config("m", 1), v1_backend).ok());
  ASSERT_TRUE(engine.Load(Config("m", 2), std::make_shared<AffineBackend>()).ok());
  std::vector<std::future<InferResult>> v1;
  for (uint64_t i = 0; i < 10; ++i) {
    auto f = engine.SubmitForFuture("m", 1, Request(rows[i], i));
    ASSERT_TRUE(f.ok());
    v1.push_back(std::move(f).value());
  }
  ASSERT_TRUE(Eventually([&] { return v1_backend->entered() >= 1; }));
  std::thread unloader([&] { EXPECT_TRUE(engine.Unload("m", 1, /*drain=*/true).ok()); });
  FinishOnExit finish(gate, unloader);
  ASSERT_TRUE(Eventually([&] { return engine.Find("m", 1) == nullptr; }));
  // v1 is draining (held at the gate); v2 serves meanwhile.
  for (uint64_t i = 10; i < 20; ++i) {
    auto f = engine.SubmitForFuture("m", Engine::kLatest, Request(rows[i], i));
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(Ready(*f));
    ExpectComputed(f->get(), rows[i]);
  }
  gate.Open();
  unloader.join();
  for (size_t i = 0; i < v1.size(); ++i) {
    ASSERT_TRUE(Ready(v1[i]));
    ExpectComputed(v1[i].get(), rows[i]);
  }
}

// Versions come and go while submitters target the latest one: every accepted
// request is answered (computed: unloads drain), every refusal is NOT_FOUND.
TEST(Engine, LoadUnloadChurnUnderConcurrentSubmits) {
  std::vector<float> row = Row(5);
  Engine engine;
  std::atomic<bool> stop{false};
  std::atomic<int> accepted{0}, refused{0}, failures{0};
  auto submitter = [&] {
    while (!stop.load(std::memory_order_acquire)) {
      auto f = engine.SubmitForFuture("churn", Engine::kLatest, Request(row, 5));
      if (!f.ok()) {
        if (f.status().code() != StatusCode::kNotFound && f.status().code() != StatusCode::kUnavailable) {
          ADD_FAILURE() << f.status().ToString();
        }
        refused.fetch_add(1);
        std::this_thread::yield();
        continue;
      }
      accepted.fetch_add(1);
      if (!Ready(*f)) {
        failures.fetch_add(1);
        continue;
      }
      ExpectComputed(f->get(), row);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) threads.emplace_back(submitter);
  const int rounds = Scaled(60);
  for (int r = 0; r < rounds; ++r) {
    int64_t version = 1 + r % 3;
    Status st = engine.Load(Config("churn", version), std::make_shared<AffineBackend>());
    if (!st.ok()) ADD_FAILURE() << st.ToString();
    std::this_thread::sleep_for(std::chrono::microseconds(300));
    st = engine.Unload("churn", version, /*drain=*/true);
    if (!st.ok()) ADD_FAILURE() << st.ToString();
    (void)engine.Stats("churn");
    (void)engine.List();
  }
  stop.store(true, std::memory_order_release);
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(accepted.load() + refused.load(), 0);
  EXPECT_TRUE(engine.List().empty());
}

// ---- Replace (hot reload) ----------------------------------------------------

TEST(EngineReplace, SwapsTheModelOfALoadedVersion) {
  Engine engine;
  auto first = std::make_shared<AffineBackend>();
  auto second = std::make_shared<AffineBackend>();
  ASSERT_TRUE(engine.Load(Config("m", 1), first).ok());
  EXPECT_EQ(engine.Load(Config("m", 1), second).code(), StatusCode::kAlreadyExists);  // Load never replaces
  std::shared_ptr<Model> old = engine.Find("m", 1);

  ModelConfig next = Config("m", 1, /*instances=*/2);  // same signature, other settings
  ASSERT_TRUE(engine.Replace(next, second).ok());
  std::shared_ptr<Model> now = engine.Find("m", 1);
  ASSERT_NE(now, nullptr);
  EXPECT_NE(now, old);
  EXPECT_EQ(now->config().instances, 2u);
  ASSERT_EQ(engine.List().size(), 1u);
  std::vector<float> row = Row(9);
  EXPECT_EQ(old->Submit(Request(row, 9, nullptr)).code(), StatusCode::kUnavailable);  // the old one stopped
  auto f = engine.SubmitForFuture("m", 1, Request(row, 9));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_TRUE(Ready(*f));
  ExpectComputed(f->get(), row);
  EXPECT_EQ(first->entered(), 0);
  EXPECT_EQ(second->entered(), 1);

  // A version that is not loaded is loaded.
  ASSERT_TRUE(engine.Replace(Config("m", 2), std::make_shared<AffineBackend>()).ok());
  EXPECT_EQ(engine.Find("m")->config().version, 2);
}

TEST(EngineReplace, RefusalsKeepTheLoadedVersionServing) {
  Engine engine;
  auto loaded = std::make_shared<AffineBackend>();
  ASSERT_TRUE(engine.Load(Config("m", 3), loaded).ok());
  std::shared_ptr<Model> before = engine.Find("m", 3);

  ModelConfig wider = Config("m", 3);
  wider.inputs[0].shape = Shape{-1, kF + 1};
  Status sig = engine.Replace(wider, std::make_shared<AffineBackend>());
  EXPECT_EQ(sig.code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(sig.message(), "model 'm' version 3: the replacement's inputs differ")) << sig.message();
  ModelConfig renamed = Config("m", 3);
  renamed.outputs[0].name = "z";
  EXPECT_EQ(engine.Replace(renamed, std::make_shared<AffineBackend>()).code(), StatusCode::kFailedPrecondition);
  ModelConfig bad = Config("m", 3);
  bad.instances = 0;
  EXPECT_EQ(engine.Replace(bad, std::make_shared<AffineBackend>()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(engine.Replace(Config("m", Engine::kLatest), std::make_shared<AffineBackend>()).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(engine.Replace(Config("m", 3), nullptr).code(), StatusCode::kInvalidArgument);
  // A refused Replace of a version that was not loaded leaves nothing behind.
  ModelConfig bad_new = Config("other", 1);
  bad_new.outputs.clear();
  EXPECT_EQ(engine.Replace(bad_new, std::make_shared<AffineBackend>()).code(), StatusCode::kInvalidArgument);

  EXPECT_EQ(engine.Find("m", 3), before);
  ASSERT_EQ(engine.List().size(), 1u);
  std::vector<float> row = Row(4);
  auto f = engine.SubmitForFuture("m", 3, Request(row, 4));
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(Ready(*f));
  ExpectComputed(f->get(), row);
  EXPECT_EQ(loaded->entered(), 1);

  engine.Shutdown();
  EXPECT_EQ(engine.Replace(Config("m", 3), std::make_shared<AffineBackend>()).code(), StatusCode::kUnavailable);
  EXPECT_TRUE(engine.List().empty());
}

// The old model is held at a gate with requests queued; Replace publishes the
// new one at once (new requests are computed by it while the old one drains) and
// returns once the old one has answered everything (computed, or CANCELLED).
void ReplaceAnswersTheOldQueue(bool drain) {
  Gate gate(/*open=*/false);
  auto old_backend = std::make_shared<AffineBackend>(&gate);
  auto new_backend = std::make_shared<AffineBackend>();
  const int n = Scaled(20, 2);
  std::vector<std::vector<float>> rows;
  for (int i = 0; i < 2 * n; ++i) rows.push_back(Row(static_cast<uint64_t>(i)));
  Engine engine;
  OpenOnExit open_on_exit(gate);
  ASSERT_TRUE(engine.Load(Config("m", 1), old_backend).ok());
  std::shared_ptr<Model> old = engine.Find("m", 1);
  std::vector<std::future<InferResult>> queued;
  for (int i = 0; i < n; ++i) {
    auto f = engine.SubmitForFuture("m", 1, Request(rows[i], i));
    ASSERT_TRUE(f.ok());
    queued.push_back(std::move(f).value());
    if (i == 0) ASSERT_TRUE(Eventually([&] { return old_backend->entered() >= 1; }));  // {0} held at the gate
  }
  std::thread replacer([&] { EXPECT_TRUE(engine.Replace(Config("m", 1), new_backend, drain).ok()); });
  FinishOnExit finish(gate, replacer);
  ASSERT_TRUE(Eventually([&] { return engine.Find("m", 1) != old; }));
  for (int i = n; i < 2 * n; ++i) {  // served by the new model while the old one is held
    auto f = engine.SubmitForFuture("m", Engine::kLatest, Request(rows[i], i));
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    ASSERT_TRUE(Ready(*f));
    ExpectComputed(f->get(), rows[i]);
  }
  EXPECT_EQ(new_backend->entered() > 0, true);
  gate.Open();
  replacer.join();
  size_t computed = 0;
  for (auto& f : queued) {
    ASSERT_EQ(f.wait_for(std::chrono::seconds(0)), std::future_status::ready);  // before Replace returned
    InferResult r = f.get();
    if (r.status.ok()) {
      ExpectComputed(r, rows[r.tag]);
      ++computed;
    } else {
      EXPECT_EQ(r.status.code(), StatusCode::kCancelled) << r.status.ToString();
    }
  }
  EXPECT_EQ(computed, drain ? static_cast<size_t>(n) : 1u);
}

TEST(EngineReplace, DrainsTheOldModelAfterPublishingTheNewOne) { ReplaceAnswersTheOldQueue(true); }
TEST(EngineReplace, WithoutDrainCancelsTheOldQueue) { ReplaceAnswersTheOldQueue(false); }

// Submitters target the version (by number and as the latest) through futures
// and callback sinks while it is replaced over and over: no submit is refused (a
// request that reaches a stopping model follows it to its replacement), and
// every request is computed exactly once. TSan checks the publish/stop order.
TEST(EngineReplace, ConcurrentSubmitsDuringSwapsAreNeverRefused) {
  constexpr int kThreads = 4;
  constexpr size_t kWindow = 16;  // requests in flight per callback submitter (the queue stays short)
  std::vector<float> row = Row(5);
  std::vector<CollectSink> sinks(kThreads);
  std::vector<size_t> submitted(kThreads, 0);
  Engine engine;  // after the sinks and payload: it stops first
  ASSERT_TRUE(engine.Load(Config("hot", 1), std::make_shared<AffineBackend>()).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  auto submitter = [&](int t) {
    const int64_t version = t % 2 == 0 ? 1 : Engine::kLatest;
    while (!stop.load(std::memory_order_acquire)) {
      uint64_t tag = submitted[t];
      if (t < 2) {  // a shared-sink caller, like the Python binding
        if (submitted[t] >= kWindow && !sinks[t].WaitFor(submitted[t] - kWindow)) {
          failures.fetch_add(1);
          return;
        }
        Status st = engine.Submit("hot", version, Request(row, tag, &sinks[t]));
        if (!st.ok()) {
          ADD_FAILURE() << st.ToString();
          failures.fetch_add(1);
          return;
        }
        ++submitted[t];
        continue;
      }
      auto f = engine.SubmitForFuture("hot", version, Request(row, tag));
      if (!f.ok()) {
        ADD_FAILURE() << f.status().ToString();
        failures.fetch_add(1);
        return;
      }
      ++submitted[t];
      if (!Ready(*f)) {
        failures.fetch_add(1);
        return;
      }
      ExpectComputed(f->get(), row);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(submitter, t);
  const int swaps = Scaled(40);
  for (int s = 0; s < swaps; ++s) {
    Status st = engine.Replace(Config("hot", 1, /*instances=*/1 + s % 2), std::make_shared<AffineBackend>(),
                               /*drain=*/true);
    if (!st.ok()) ADD_FAILURE() << st.ToString();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  stop.store(true, std::memory_order_release);
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  for (int t = 0; t < 2; ++t) {
    ASSERT_TRUE(sinks[t].WaitFor(submitted[t]));
    auto answers = sinks[t].ByTag();  // each exactly once
    EXPECT_EQ(answers.size(), submitted[t]);
    for (const auto& [tag, r] : answers) ExpectComputed(r, row);
  }
  for (int t = 0; t < kThreads; ++t) EXPECT_GT(submitted[t], 0u) << "submitter " << t;
  ASSERT_EQ(engine.List().size(), 1u);
}

}  // namespace
}  // namespace inferline
