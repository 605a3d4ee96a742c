// Private: one inference request through the native frontend, shared by ModelInfer (unary) and
// ModelStreamInfer: admission, parse, decode, route into the core, and the answer.
//
//   Run(raw, deadline): admission (before parsing: a refusal costs a mutex and a message) ->
//     parse (protobuf, on the job's arena) -> Decode (wire.h) -> ResolveInputsFor (router.h) ->
//     names and outputs checked, inputs in the config order of that version -> Router::Submit.
//     Over the admission limit the job waits in the lobby (admission.h) with its bytes (the
//     slices shared, not copied) and goes on from parse on the thread that admits it (Admitted:
//     a core executor thread finishing another request, or the sweeper) or is answered from
//     there (Refused).
//   The answer: exactly one Reply per Run, from Run itself (refused, bad request), from the
//     lobby's release, or from the core's Deliver (encoded there, on the executor thread, maybe
//     before Run returns). Requests the answer's Admission::Done releases run after the Reply.
//
// Lifetime: reference counted. The owner (the unary call's RPC, or the stream's read handler)
// holds one reference; Run takes one for the lobby while the job waits there, and one for the
// core before Router::Submit, dropped after Deliver (and the tap) are done. The parsed message,
// which the core's TensorViews point into, lives until all are gone. The owner's cancelled flag
// (InferRequest::cancelled) must outlive the job.
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

class InferJob : public CompletionSink, public LobbyWaiter {
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
  // LobbyWaiter: the job leaves the lobby (on the releasing thread).
  void Admitted(const AdmissionToken& token) noexcept final;
  void Refused(AdmissionRefusal refusal) noexcept final;
  bool Abandoned() const noexcept final {
    return cancelled_ != nullptr && cancelled_->load(std::memory_order_relaxed);
  }

  void Ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

 protected:
  ~InferJob() override;
  // The answer, exactly once per Run, on whichever thread produced it.
  virtual void Reply(Answer answer) noexcept = 0;
  // The owner's call was cancelled: a job waiting in the lobby leaves it now (no answer).
  void LeaveLobby() noexcept;

  const std::shared_ptr<Shared> shared_;

 private:
  Admission::Entry Park(const grpc::ByteBuffer& raw, std::optional<double> left_s, AdmissionRefusal* refusal);
  void Proceed(const grpc::ByteBuffer& raw, std::optional<uint64_t> left_us);
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
  void Tap(const InferResult& result, const ModelConfig* answered, uint32_t reasons);

  const Protocol protocol_;
  const std::atomic<bool>* const cancelled_;
  std::atomic<int> refs_{1};
  bool admitted_ = false;
  AdmissionToken token_;
  std::chrono::system_clock::time_point deadline_;  // the call's (max: none)
  grpc::ByteBuffer parked_raw_;  // the request's bytes while it waits in the lobby
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
