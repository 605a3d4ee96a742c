// Private: one inference request through the native frontend, shared by ModelInfer (unary) and
// ModelStreamInfer: admission, parse, decode, route into the core, and the answer.
//
//   Run(raw, deadline): admission (before parsing: a refusal costs a mutex and a message) ->
//     parse (protobuf, on the job's arena) -> Decode (wire.h) -> ResolveInputsFor (router.h) ->
//     names and outputs checked, inputs in the config order of that version -> Router::Submit.
//   The answer: exactly one Reply per Run, from Run itself (refused, bad request) or from the
//     core's Deliver (encoded there, on the executor thread, maybe before Run returns).
//
// Lifetime: reference counted. The owner (the unary call's RPC, or the stream's read handler)
// holds one reference; Run takes one for the core before Router::Submit, dropped after Deliver
// (and the tap) are done. The parsed message, which the core's TensorViews point into, lives
// until both are gone. The owner's cancelled flag (InferRequest::cancelled) must outlive the job.
#pragma once

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include <google/protobuf/arena.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <vector>

#include "inference.pb.h"
#include "shared.h"
#include "wire.h"

namespace inferline::grpcfe {

class InferJob : public CompletionSink {
 public:
  struct Answer {
    grpc::Status status;         // unary: the call's status (stream: always OK)
    grpc::ByteBuffer body;       // unary OK: the ModelInferResponse; stream: the ModelStreamInferResponse
    int64_t retry_after_ms = -1; // >= 0: trailer `retry-after-ms` (an overload refusal)
  };

  InferJob(std::shared_ptr<Shared> shared, Protocol protocol, const std::atomic<bool>* cancelled);
  InferJob(const InferJob&) = delete;
  InferJob& operator=(const InferJob&) = delete;

  // See the file comment. `deadline`: the call's gRPC deadline (time_point::max(): none).
  void Run(const grpc::ByteBuffer& raw, std::chrono::system_clock::time_point deadline);
  void Deliver(InferResult* results, size_t count) noexcept final;

  void Ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

 protected:
  ~InferJob() override;
  // The answer, exactly once per Run, on whichever thread produced it.
  virtual void Reply(Answer answer) noexcept = 0;

  const std::shared_ptr<Shared> shared_;

 private:
  Status Parse(const grpc::ByteBuffer& raw);
  Status Prepare(std::optional<uint64_t> deadline_us);
  Status Resolve();
  Status CheckNames();
  Status BuildRequest();
  Status NameMismatch() const;
  Status Submit();
  void Fail(const Status& status, int64_t retry_after_ms = -1);
  void HandleResult(InferResult& result);
  Status Encode(const InferResult& result, const ModelConfig& config, Answer* answer);
  void Tap(const InferResult& result, const ModelConfig* answered);

  const Protocol protocol_;
  const std::atomic<bool>* const cancelled_;
  std::atomic<int> refs_{1};
  bool admitted_ = false;
  AdmissionToken token_;
  uint64_t start_ns_ = 0;    // admission
  uint64_t decode_ns_ = 0;   // parse to submit
  alignas(16) char arena_block_[2048];
  google::protobuf::Arena arena_;
  inference::ModelInferRequest* msg_ = nullptr;  // on arena_; set once parsed
  DecodedRequest decoded_;
  std::shared_ptr<Model> model_;  // the version converted for
  int64_t requested_version_ = 0; // model_version as a number; 0: routed by the policy
  std::vector<int> selection_;    // requested outputs, indices into model_'s outputs
  InferRequest request_;
  RouteRequest route_;
};

uint64_t NowNs() noexcept;

}  // namespace inferline::grpcfe
