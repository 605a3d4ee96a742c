// Private: how the frontend's threads are scheduled while the server is overloaded.
//
// Why: on a machine where the model's executor threads share cores with gRPC's, every call that
// arrives wakes a gRPC thread, and Linux lets a waking thread preempt the running one. Under
// overload thousands of calls a second arrive that will only be refused, and each preempts the
// model mid-batch (measured: ~6,600 preemptions/s of the executor at 10x capacity, a fifth of
// its core gone to switching and refused calls). SCHED_BATCH threads keep their fair share of
// the CPU (nice 0) but do not preempt on wake-up: they run when the model's thread yields or its
// slice ends. So while the server refuses requests (some wait hopeless in the admission lobby,
// or one was refused within the last 100 ms) the frontend's threads run SCHED_BATCH, and they go
// back to SCHED_OTHER once none has been refused for a second. A busy server that keeps up, whose
// lobby fills and empties without refusing anyone, stays as it is: there the quick hand-offs
// between gRPC's threads and the model's are the throughput (measured: a light model at
// saturation, streaming, p50 15 -> 27 ms when batched).
//
// The threads are found by name in /proc/self/task: the frontend's own (its lanes, which read
// every call, its lobby's sweeper and control thread, named with NameThisThread) and gRPC's
// (executors, timer and resolver; and the callback and synchronous-server threads of gRPC
// servers that use them, none in this frontend). Threads gRPC starts later are caught by re-applying every second.
#pragma once

namespace inferline::grpcfe {

// Names the calling thread (at most 15 bytes are kept) so that IoSchedule finds it.
void NameThisThread(const char* name) noexcept;

// Whether `comm` (a thread's name as /proc shows it) is one of the frontend's I/O threads.
bool IsFrontendThreadName(const char* comm) noexcept;

// Sets every frontend thread of this process to SCHED_BATCH (`batch`) or SCHED_OTHER. Returns how
// many threads it set (threads that exit meanwhile are skipped). Linux only; elsewhere 0.
int SetFrontendThreadsBatch(bool batch) noexcept;

// The sweeper's state machine: Tick after each sweep with whether requests wait.
class OverloadSchedule {
 public:
  explicit OverloadSchedule(bool enabled) : enabled_(enabled) {}
  // `now_s` on a monotonic clock. Applies SCHED_BATCH when requests start being refused (and
  // every second while they are), SCHED_OTHER once none has been for kCalmS.
  void Tick(double now_s, bool refusing) noexcept;
  // Back to SCHED_OTHER if batched (at shutdown).
  void Restore() noexcept;
  bool batched() const noexcept { return batched_; }

  static constexpr double kCalmS = 1.0;
  static constexpr double kReapplyS = 1.0;

 private:
  const bool enabled_;
  bool batched_ = false;
  double applied_s_ = 0;
  double last_refusing_s_ = 0;
};

}  // namespace inferline::grpcfe
