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
// Meanwhile (overload_coalesce) the frontend's TCP connections run Nagle's algorithm. Why: each
// refusal is a few dozen bytes of HTTP/2 trailers, and gRPC sends every answer with its own
// sendmsg. With TCP_NODELAY each becomes a segment, and on loopback the sender's core also runs
// the receiver's side of TCP for it: measured ~8 us of the server's kernel time per refusal at
// 10x capacity, a tenth of a core at 7,000 refusals a second. With Nagle, an answer written while
// the connection's last segment is unacknowledged joins the next one; clients that keep sending
// acknowledge at once, so the wait is short (at worst the client's delayed ACK, tens of ms, under
// overload only). Measured, server on one core at open 10x, four runs each: goodput 0.82-0.86
// of capacity against 0.78-0.85 (bench/server/overload_threads.py; bench/README.md, "Refusals
// coalesced"). A calm server keeps TCP_NODELAY: there an answer must not wait for an
// acknowledgement.
//
// The connections are found in /proc/self/fd: TCP sockets bound to the frontend's port with a
// peer (the listener has none; this process's own clients of the port have another local port).
// That costs a few syscalls per descriptor of the process, at each switch and once a second while
// refusing. Each descriptor is checked (port, type, peer) just before it is set, so one that gRPC
// closes and the process reuses meanwhile is left alone unless it is again one of the port's.
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

// Sets TCP_NODELAY to `nodelay` on every connected TCP socket of this process whose local port
// is `port` (> 0). Returns how many it set. Linux only; elsewhere 0.
int SetConnectionsNoDelay(int port, bool nodelay) noexcept;

// The sweeper's state machine: Tick after each sweep with whether requests wait.
class OverloadSchedule {
 public:
  // `batch_threads`: SCHED_BATCH while refusing; `coalesce_port` > 0: Nagle on that port's
  // connections meanwhile.
  OverloadSchedule(bool batch_threads, int coalesce_port) : batch_(batch_threads), port_(coalesce_port) {}
  // `now_s` on a monotonic clock. Applies the overload mode when requests start being refused
  // (and every second while they are, for threads and connections new since), and leaves it once
  // none has been refused for kCalmS.
  void Tick(double now_s, bool refusing) noexcept;
  // Out of the overload mode if in it (at shutdown).
  void Restore() noexcept;
  bool batched() const noexcept { return batched_; }

  static constexpr double kCalmS = 1.0;
  static constexpr double kReapplyS = 1.0;

 private:
  void Apply(bool overloaded) noexcept;

  const bool batch_;
  const int port_;
  bool batched_ = false;  // in the overload mode
  double applied_s_ = 0;
  double last_refusing_s_ = 0;
};

}  // namespace inferline::grpcfe
