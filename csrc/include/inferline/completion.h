// inferline/completion.h — how answers get back to callers.
//
// Every accepted request is answered exactly once, through the CompletionSink
// named in its InferRequest: with outputs, or with a non-OK status
// (DEADLINE_EXCEEDED, CANCELLED at shutdown, the backend's error, ...).
// The engine delivers all of one batch's answers for one sink in ONE Deliver
// call, so a sink can wake its consumer once per batch, not once per request.
//
// Sinks provided:
//   CallbackSink  runs a function per answer on the executor thread.
//   PollableSink  queues answers and signals an eventfd that an event loop (or
//                 WaitReadable) watches; Drain() takes everything queued.
//   PromiseSink   one-shot, for ONE request: fulfils a std::promise with its
//                 answer, then deletes itself (Engine::SubmitForFuture uses it).
// A sink must outlive every request submitted with it (Model::Shutdown answers
// all of them before it returns).
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <mutex>
#include <vector>

#include <string>

#include "inferline/route_policy.h"
#include "inferline/status.h"
#include "inferline/tensor.h"

namespace inferline {

struct InferResult {
  uint64_t tag = 0;             // InferRequest::tag, echoed
  Status status;                // non-OK: outputs is empty
  std::vector<Tensor> outputs;  // one per declared output, in config order; dim 0 = the request's rows
  uint64_t queue_us = 0;        // enqueue -> batch start
  uint64_t compute_us = 0;      // the batch's gather + backend + scatter time
  // Who answered: the model version that computed the outputs (or whose error
  // this is). Set on every answer, by Model and by Router (router.h). A Router
  // answer from its prediction cache names the version the entry came from.
  std::string answered_model;
  int64_t answered_version = 0;
  // kNone unless a Router took a fallback for this request: then why it left the
  // primary (the first fallback's reason), also when the caller gets the
  // primary's error after every fallback failed.
  FallbackReason fallback_reason = FallbackReason::kNone;
  // Router answers: the version the request was routed to (its arm, or the
  // version asked for), whoever answered; 0 on answers that bypass a Router.
  int64_t primary_version = 0;
};

class CompletionSink {
 public:
  virtual ~CompletionSink() = default;
  // Called from executor threads (or from Model::Shutdown); may be called
  // concurrently for different batches. The sink may move out of `results`.
  virtual void Deliver(InferResult* results, size_t count) noexcept = 0;
};

class CallbackSink final : public CompletionSink {
 public:
  explicit CallbackSink(std::function<void(InferResult&&)> fn) : fn_(std::move(fn)) {}
  void Deliver(InferResult* results, size_t count) noexcept override;

 private:
  std::function<void(InferResult&&)> fn_;
};

// Linux eventfd-backed queue of answers. Thread-safe.
class PollableSink final : public CompletionSink {
 public:
  PollableSink();  // throws std::system_error if no eventfd can be made
  ~PollableSink() override;
  PollableSink(const PollableSink&) = delete;
  PollableSink& operator=(const PollableSink&) = delete;

  void Deliver(InferResult* results, size_t count) noexcept override;
  // Readable while answers are queued. Level-triggered until Drain() empties it.
  int fd() const noexcept { return fd_; }
  // Moves every queued answer to the end of `out`; returns how many.
  size_t Drain(std::vector<InferResult>* out);
  // Blocks until answers are queued or `timeout_ms` passes (-1 = forever).
  bool WaitReadable(int timeout_ms) const noexcept;

 private:
  int fd_ = -1;
  std::mutex mu_;
  std::vector<InferResult> ready_;  // requires mu_
};

// A heap-allocated, self-deleting sink for exactly one request. Lifecycle:
//   std::future<InferResult> f;
//   PromiseSink* sink = PromiseSink::Create(&f);   // nullptr if out of memory
//   req.sink = sink;
//   Status st = model.Submit(req);
//   if (!st.ok()) sink->Abandon();   // refused: never answered, so free it here
//   // accepted: Deliver fulfils f and deletes the sink (maybe before Submit returns,
//   // so do not touch `sink` after an OK Submit)
// Deliver and Abandon are each called at most once, and never both.
class PromiseSink final : public CompletionSink {
 public:
  static PromiseSink* Create(std::future<InferResult>* future) noexcept;
  // Sets the promise to results[0] (count is 1 for a one-request sink), then `delete this`.
  void Deliver(InferResult* results, size_t count) noexcept override;
  // Deletes the sink without an answer; its future reports broken_promise.
  void Abandon() noexcept;

 private:
  PromiseSink() = default;
  ~PromiseSink() override = default;
  std::promise<InferResult> promise_;
};

}  // namespace inferline
