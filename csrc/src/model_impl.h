// Private: the state behind Model. See model.h for the guarantees.
//
// Threads: callers run Submit; `instances` executor threads each loop
// "assemble one batch (holding assemble_mu_), run it (holding nothing)".
// Ownership: a Request is allocated by Submit, owned by its queue slot, then by
// the assembler's pending lists, then by one executor's Batch, and deleted after
// its answer is delivered.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gpu_lane.h"
#include "inferline/model.h"
#include "inferline/mpmc_queue.h"

namespace inferline {

class SplitRequest;

struct Request {
  InferRequest req;
  uint32_t rows = 0;
  uint64_t enqueue_us = 0;
  bool is_part = false;  // one part of a request larger than max_batch_size; req.sink is its SplitRequest
};

// One priority level's queue, with admission by reservation: Submit reserves
// every slot a request needs (one, or one per part of a split request) before
// pushing, so a request is accepted whole or refused whole, and the assembler
// releases a slot after each pop.
// Why a reserved push always finds its slot free: pops happen only under
// assemble_mu_, so they complete one at a time in ticket order, and a slot is
// released (R2) only after its pop has handed the slot back (MpmcQueue C5).
// With at most `capacity` reservations outstanding, the producer of ticket t
// therefore finds ticket t - capacity fully popped.
class LevelQueue {
 public:
  explicit LevelQueue(uint32_t capacity) : queue_(capacity), capacity_(capacity) {}

  // Claims `n` slots; false (claiming none) if fewer than `n` are free.
  bool Reserve(uint64_t n) noexcept {
    uint64_t cur = reserved_.load(std::memory_order_relaxed);
    do {
      if (n > capacity_ - cur) return false;
      // R1 (acquire), pairs with R2: the slots released by pops are free for our push.
    } while (!reserved_.compare_exchange_weak(cur, cur + n, std::memory_order_acquire, std::memory_order_relaxed));
    return true;
  }
  // Requires a reservation made by this caller.
  void Push(Request* r) noexcept {
    // Cannot fail (see above); the loop only keeps the invariant local to this class.
    while (!queue_.try_push(r)) std::this_thread::yield();
  }
  // Requires assemble_mu_ (the single consumer).
  bool Pop(Request*& r) noexcept {
    if (!queue_.try_pop(r)) return false;
    reserved_.fetch_sub(1, std::memory_order_release);  // R2, pairs with R1
    return true;
  }
  size_t size() const noexcept { return queue_.size(); }
  uint64_t capacity() const noexcept { return capacity_; }

 private:
  MpmcQueue<Request*> queue_;
  const uint64_t capacity_;
  std::atomic<uint64_t> reserved_{0};  // pushed or about to be pushed, not yet popped
};

struct Batch {
  std::vector<Request*> requests;  // to compute, in dispatch order
  uint32_t rows = 0;
  std::vector<Request*> expired;    // answer DEADLINE_EXCEEDED
  std::vector<Request*> cancelled;  // answer CANCELLED (shutdown)
  std::vector<Request*> withdrawn;  // answer CANCELLED (the caller withdrew it)
  std::vector<Request*> late;       // answer DEADLINE_EXCEEDED: overloaded, cannot finish in time
  std::vector<Request*> shed;       // answer RESOURCE_EXHAUSTED: overloaded, waited too long
  bool HasAnswers() const { return !expired.empty() || !withdrawn.empty() || !late.empty() || !shed.empty(); }
  void Clear() {
    requests.clear();
    rows = 0;
    expired.clear();
    cancelled.clear();
    withdrawn.clear();
    late.clear();
    shed.clear();
  }
};

class Model::Impl {
 public:
  Impl(ModelConfig config, std::vector<TensorSpec> backend_inputs, std::shared_ptr<Backend> backend, Clock* clock);
  ~Impl();

  Status Submit(const InferRequest& request);
  void Shutdown(bool drain);
  void Wake();
  // Makes the GPU lanes (one per executor) of a model placed on a GPU; call before Start.
  Status CreateLanes();
  void Start();
  GpuMemory gpu_memory() const noexcept;

  ModelConfig config_;
  std::vector<TensorSpec> backend_inputs_;
  std::string context_;  // "model 'x' version 1", for messages
  std::shared_ptr<Backend> backend_;
  Clock* clock_;
  ModelStats stats_;
  ComputeEstimator estimator_;
  // For EstimateCompletionUs (model.cpp): estimator_.Current() as of the latest
  // batch, and the rows admitted but not yet answered (Admit adds, Finish subtracts).
  std::atomic<double> estimate_fixed_us_{0.0};
  std::atomic<double> estimate_per_row_us_{0.0};
  std::atomic<uint64_t> unanswered_rows_{0};

 private:
  Status CheckRequest(const InferRequest& request, uint32_t* rows) const;
  // Queues all of `requests` at `level`, or none (then the caller still owns them).
  Status Admit(const std::vector<Request*>& requests, uint32_t level, uint32_t rows);
  // split_request.cpp: the parts of an oversize request, answered through one
  // SplitRequest sink; DiscardParts frees parts that were never queued.
  std::vector<Request*> MakeParts(const InferRequest& request, uint32_t rows);
  static void DiscardParts(std::vector<Request*>& parts);
  void NotifyAssembler(uint32_t rows, uint64_t deadline_us) noexcept;

  // ---- assembler (assembler.cpp); every method requires assemble_mu_ ----
  bool Assemble(Batch* batch);
  void DrainQueues(bool unbounded);
  // Returns the earliest deadline still pending (UINT64_MAX if none).
  uint64_t CollectExpired(uint64_t now_us, std::vector<Request*>* out, std::vector<Request*>* withdrawn);
  void CancelPending(Batch* batch);
  void TakeFront(size_t count, Batch* batch);
  // Overload (QueuePolicy): CoDel's standing-queue test, run at each dispatch chance.
  bool UpdateStanding(uint64_t now_us);
  // While standing: moves hopeless requests to batch->late and, for kShedOldest,
  // those waiting longer than the interval to batch->shed; then takes a batch
  // (newest first for kNewestFirst) when anything is left.
  void AssembleOverloaded(uint64_t now_us, Batch* batch);
  void TakeNewest(uint32_t max_rows, Batch* batch);
  size_t FirstFit(uint32_t max_rows) const;
  BatchDecision Decide(uint64_t now_us);
  bool PendingEmpty() const;
  // Sleeps up to wait_us, or until an arrival meets the wake conditions.
  void SleepUpTo(uint64_t wait_us, uint64_t wake_rows = 1, uint64_t wake_deadline_before = UINT64_MAX);
  void SleepForBatch(uint64_t now_us, uint64_t wait_us);
  void ExecutorLoop(GpuLane* lane);

  // ---- execution (executor.cpp); called by one executor, no lock held ----
  void RunBatch(Batch& batch, GpuLane* lane);
  // The GPU twin of RunRange (lane staged with the batch whose rows start at row_begin 0).
  void RunRangeGpu(GpuLane& lane, Request* const* requests, size_t count, uint32_t row_begin, uint32_t rows,
                   bool top_level, uint64_t start_us);
  // After a batch (or a range of it) ran: the batch stats and compute estimate (top level only).
  void RecordRun(bool top_level, uint32_t rows, bool ok, uint64_t start_us, uint64_t t0, uint64_t t1);
  // Answers requests[0, count) with `st`, or with their row slices of `outputs` when st is OK.
  void Respond(Request* const* requests, size_t count, const std::vector<Tensor>& outputs, const Status& st,
               uint64_t start_us, uint64_t t1);
  std::vector<NamedTensor> Gather(const Batch& batch);
  void RunRange(const std::vector<NamedTensor>& inputs, Request* const* requests, size_t count,
                uint32_t row_begin, uint32_t rows, bool top_level, uint64_t start_us);
  Status RunBackend(const std::vector<NamedTensor>& inputs, uint32_t rows, std::vector<Tensor>* outputs,
                    bool* backend_failed);

  std::vector<std::unique_ptr<LevelQueue>> queues_;  // one per priority level

  std::atomic<bool> stopping_{false};   // no new submissions
  std::atomic<bool> released_{false};   // every accepted submission is in a queue
  std::atomic<bool> drain_{true};
  std::atomic<int64_t> submitters_{0};  // Submit calls between the stop check and the push
  std::mutex shutdown_mu_;              // serialises Shutdown callers

  std::mutex assemble_mu_;
  std::vector<std::deque<Request*>> pending_;  // requires assemble_mu_
  std::vector<uint32_t> pending_rows_;         // requires assemble_mu_
  std::vector<PendingItem> view_items_;        // requires assemble_mu_
  const uint64_t standing_target_us_;          // config_.queue.TargetUs(config_.batching)
  bool standing_ = false;                      // requires assemble_mu_
  bool above_target_ = false;                  // requires assemble_mu_: the oldest waited > target since
  uint64_t above_since_us_ = 0;                // requires assemble_mu_

  std::atomic<bool> sleeping_{false};  // the assembler may be waiting on wake_cv_
  // What makes a sleeping assembler worth waking (set before sleeping_, W0):
  std::atomic<uint64_t> wake_rows_{1};           // rows arriving that could close a batch by size
  std::atomic<uint64_t> wake_deadline_before_{0};  // a deadline earlier than this may close it earlier
  std::atomic<uint64_t> arrived_rows_{0};        // rows pushed since the assembler went to sleep
  std::mutex wake_mu_;
  std::condition_variable wake_cv_;
  bool wake_flag_ = false;  // requires wake_mu_

  std::vector<std::unique_ptr<GpuLane>> lanes_;  // one per executor when config_.gpu is enabled
  DeviceBackend* device_backend_ = nullptr;      // backend_, when it is a DeviceBackend
  std::vector<std::thread> executors_;
};

// Answers requests that were never computed (expired, cancelled, refused parts).
void AnswerWithStatus(Model::Impl& model, std::vector<Request*>& requests, const Status& status);

// Records the stats of one final answer (not of a part of a split request).
void RecordOutcome(ModelStats& stats, const Status& status, uint64_t queue_us, uint64_t end_to_end_us);

}  // namespace inferline
