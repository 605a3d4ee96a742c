// Private: the frontend's calls on gRPC's asynchronous (completion-queue) API.
//
// Why not the callback API: it always runs at least two gRPC "nexting" threads, which hand the
// poller role to each other at every event (two futex calls per event). On a core shared with the
// model that costs a refusal ~40 us of CPU against ~28 on one thread polling its own queue
// (bench/server/grpc_refusal_floor.py). So every service of the frontend is served here, each
// completion queue polled by one of the frontend's own threads (frontend.cpp), and no callback
// or synchronous method is registered (either would start gRPC's own polling threads again).
//
// A call is an object with one CqEvent member per kind of operation it starts (requested, read,
// write, finish, done); the event's address is the tag. Operations are started from the queue's
// thread and from others (the core's executors answer, SetServing notifies health watchers, the
// control plane answers its calls): gRPC allows that, one operation of each kind at a time per
// call. Every start goes through the frontend's OpGate, which Shutdown closes before it shuts the
// queues down, since an operation started on a shut-down queue is a fatal error in gRPC.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

#include "tsan.h"

namespace inferline::grpcfe {

// A tag: what runs on the queue's thread when the operation completes.
class CqEvent {
 public:
  virtual void Complete(bool ok) noexcept = 0;

 protected:
  ~CqEvent() = default;
};

// The event of `Call` whose completion runs `call->*Handler(ok)`.
template <class Call, void (Call::*Handler)(bool)>
class On final : public CqEvent {
 public:
  explicit On(Call* call) noexcept : call_(call) {}
  // The tag to start an operation with: what the starting thread did happens before the handler.
  void* tag() noexcept {
    HandOff(this);
    return this;
  }
  void Complete(bool ok) noexcept override {
    TakeOver(this);
    (call_->*Handler)(ok);
  }

 private:
  Call* const call_;
};

// Lets operations start until Close, which waits for those starting to return.
class OpGate {
 public:
  bool Enter() noexcept {
    if (state_.fetch_add(1, std::memory_order_acquire) & kClosed) {
      Exit();
      return false;
    }
    return true;
  }
  void Exit() noexcept { state_.fetch_sub(1, std::memory_order_release); }
  void Close() noexcept {
    state_.fetch_or(kClosed, std::memory_order_acq_rel);
    while ((state_.load(std::memory_order_acquire) & ~kClosed) != 0) std::this_thread::yield();
  }

  // Runs `start` (which starts one operation) unless closed; whether it ran.
  template <class F>
  bool Run(F&& start) {
    if (!Enter()) return false;
    start();
    Exit();
    return true;
  }

 private:
  static constexpr uint64_t kClosed = uint64_t{1} << 62;
  std::atomic<uint64_t> state_{0};
};

}  // namespace inferline::grpcfe
