// inferline/model.h — one loaded model version: its queue, batch assembler and executors.
//
//   Submit ──▶ per-priority lock-free queues ──▶ assembler (DecideBatch) ──▶ executor:
//              gather + preprocess into one aligned buffer per input ──▶ Backend::Run
//              ──▶ scatter (zero-copy row slices of the outputs) ──▶ CompletionSink
//
// Executors follow a leader/follower scheme: an idle executor takes the
// assembler role, forms one batch, gives the role up and runs the batch, so a
// batch is closed exactly when an instance is free to compute it.
//
// Guarantees:
//  - Submit never blocks. A full queue is refused with RESOURCE_EXHAUSTED; a
//    model that is shutting down refuses with UNAVAILABLE; a malformed request
//    is refused with INVALID_ARGUMENT naming the model, version and input.
//    A refused request is not answered through its sink (Submit's status is
//    the answer); an accepted request is answered through its sink exactly once.
//  - A request whose deadline passes before its batch starts is answered with
//    DEADLINE_EXCEEDED and never computed.
//  - Under overload (a standing queue, see QueuePolicy) requests are served
//    newest first by default, so that arrivals still meet their deadlines;
//    requests that can no longer meet theirs are answered DEADLINE_EXCEEDED
//    without being computed.
//  - A backend error isolates the failing rows: the batch is re-run in halves
//    until the failing requests are found; only they get the error.
//  - Requests with more rows than max_batch_size are split into batches and
//    their outputs reassembled; other requests' rows are never split. A split
//    request is admitted whole or refused whole (one needing more parts than
//    queue_capacity is always RESOURCE_EXHAUSTED).
//  - Shutdown(drain) answers every accepted request (computed, or CANCELLED).
//    Once Shutdown(false) is called no new batch starts; Submit during or after
//    shutdown returns UNAVAILABLE before the request is even checked.
//
// Thread-safety: Submit, Stats, Wake, NowUs are safe from any thread.
// Shutdown is safe from any thread but must not race with destruction.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "inferline/backend.h"
#include "inferline/batch_policy.h"
#include "inferline/clock.h"
#include "inferline/completion.h"
#include "inferline/preprocess.h"
#include "inferline/stats.h"
#include "inferline/status.h"
#include "inferline/tensor.h"

namespace inferline {

inline constexpr uint32_t kMaxQueueCapacity = 1u << 22;  // 4M requests per level

// What the assembler does while the queue is standing: for a whole `interval_us`
// the oldest waiting request has always waited longer than `target_us` (CoDel's
// test: the minimum sojourn over an interval is above target). Arrivals then
// outpace the executors, and oldest-first would make every request wait until
// it is nearly, or already, too late. The queue stops standing as soon as the
// oldest waiting request has waited less than target (or nothing waits).
enum class OverloadOrder : uint8_t {
  // Default. Batches take the newest requests first (highest priority first); the
  // older ones run once the queue clears, or are answered DEADLINE_EXCEEDED at
  // their deadlines. Newly arrived requests, whose callers still wait, meet theirs.
  kNewestFirst,
  // Requests that have waited longer than interval_us are answered
  // RESOURCE_EXHAUSTED ("shed"); the rest run oldest first.
  kShedOldest,
  // No change: oldest first; requests expire at their deadlines.
  kFifo,
};

struct QueuePolicy {
  OverloadOrder overload = OverloadOrder::kNewestFirst;
  uint64_t target_us = 0;          // 0: max_queue_delay_us + 5 ms (batching delay is not overload)
  uint64_t interval_us = 100'000;  // > 0
  // While standing (except kFifo), a request whose deadline falls before its batch
  // could finish (now + the estimated compute of a full batch) is answered
  // DEADLINE_EXCEEDED at once instead of computed for nobody.

  // target_us in effect for `batching`.
  uint64_t TargetUs(const BatchPolicy& batching) const noexcept;
};

// Where a model's batches run. device < 0: on the host (Backend::Run). device >= 0: on that
// CUDA device (DeviceBackend): each executor owns a CUDA stream and a fixed set of pinned host
// and device buffers sized for max_batch_size rows, allocated when the model is created (never
// per batch), so with instances >= 2 one executor gathers and copies batch N+1 while batch N
// computes. Needs a build with CUDA (INFERLINE_HAVE_CUDA) and a visible device; declared dims
// past dim 0 must be fixed, except image preprocessing's input height and width (their buffers
// grow when a larger image arrives).
struct GpuPlacement {
  int32_t device = -1;
  // Executors' streams at the device's greatest priority: the scheduler runs this model's kernels
  // ahead of normal-priority work on the same GPU (isolation from a heavy neighbour).
  bool high_priority = false;
  bool enabled() const noexcept { return device >= 0; }
};

// What a model's GPU buffers take (zero on the host).
struct GpuMemory {
  int32_t device = -1;
  uint64_t device_bytes = 0;  // cudaMalloc'd: inputs, preprocessed inputs, outputs, workspaces
  uint64_t pinned_bytes = 0;  // cudaHostAlloc'd staging for inputs and outputs
};

struct ModelConfig {
  std::string name;
  int64_t version = 1;
  std::vector<TensorSpec> inputs;             // what callers send (dim 0 = -1, the rows)
  std::vector<TensorSpec> outputs;            // what the backend returns (dim 0 = -1)
  std::vector<PreprocessSpec> preprocessing;  // empty, or one per input (kNone where unused)
  BatchPolicy batching;
  uint32_t instances = 1;         // executors running batches in parallel
  uint32_t queue_capacity = 4096; // requests waiting per priority level; at most kMaxQueueCapacity
  uint32_t priority_levels = 2;   // priorities 0..levels-1; higher is served first
  QueuePolicy queue;              // order under overload
  GpuPlacement gpu;               // host (default) or a CUDA device
  // Opaque to the core: a host's own per-version object, kept alive with the model
  // and released with it (the Python binding keeps the Python config here, so that
  // the engine's map stays the one record of what is loaded).
  std::shared_ptr<const void> host_data;

  // "model 'name' version N"
  std::string Describe() const;
};

struct InferRequest {
  // One per declared input, in config order, all with the same dim 0 (rows >= 1).
  // The memory must stay valid until the request is answered.
  std::vector<TensorView> inputs;
  uint32_t priority = 0;         // clamped to priority_levels - 1
  uint64_t deadline_us = 0;      // absolute on the model's clock (NowUs()); 0 = none
  uint64_t tag = 0;              // echoed in InferResult::tag
  CompletionSink* sink = nullptr;
  // Set by the caller to withdraw the request (its client went away): read as
  // true before the request's batch runs, it is answered CANCELLED and never
  // computed. Optional; must stay valid until the request is answered.
  const std::atomic<bool>* cancelled = nullptr;
};

class Model {
 public:
  // Validates the config (INVALID_ARGUMENT naming the field) and starts the
  // executors. `clock` defaults to SteadyClock and must outlive the model.
  static Expected<std::unique_ptr<Model>> Create(ModelConfig config, std::shared_ptr<Backend> backend,
                                                 Clock* clock = nullptr);
  ~Model();  // Shutdown(true)
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  Status Submit(const InferRequest& request);
  // Stops accepting, then answers everything queued: computed when `drain`,
  // else CANCELLED. Idempotent; returns when every executor has stopped.
  void Shutdown(bool drain = true);
  // Makes the assembler re-evaluate now (after moving a ManualClock).
  void Wake();

  // Counters and histograms, plus queued_rows (one relaxed load: rows admitted and not answered).
  StatsSnapshot Stats() const;
  // Predicted microseconds from now until a request of `rows` rows submitted now
  // would be answered, for deadline decisions (Router): the compute time of the
  // rows already admitted and not yet answered, in batches of max_batch_size
  // shared by the `instances` executors, plus the compute of this request's own
  // batch(es). Compute times come from the model's online ComputeEstimator.
  // Approximations: rows of batches already running count in full; the batching
  // delay (max_queue_delay_us) and priorities are ignored; before the first batch
  // has run the estimate is 0 (never predicts a miss). Lock-free: two relaxed
  // loads of the estimate (refreshed once per batch) and one of the row count.
  uint64_t EstimateCompletionUs(uint32_t rows) const noexcept;
  // Zeroes the statistics (see ModelStats::Reset): call while no request is in flight.
  void ResetStats() noexcept;
  uint64_t NowUs() const noexcept;
  GpuMemory gpu_memory() const noexcept;
  const ModelConfig& config() const noexcept;
  // Inputs as the backend sees them (after preprocessing).
  const std::vector<TensorSpec>& backend_inputs() const noexcept;

  class Impl;

 private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace inferline
