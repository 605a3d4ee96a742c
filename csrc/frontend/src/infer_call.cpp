// ModelInfer: an InferJob answered through a unary callback reactor (services.h).
//
// The call finishes once: with the job's answer, or at once when the call is cancelled (the
// client went away, or Shutdown's grace ran out), so that neither waits for the core. In the
// second case the request is withdrawn (InferRequest::cancelled) and its late answer dropped.
// The object lives until both the RPC (OnDone) and the core (the job's reference) are done.
#include <string>

#include "infer_job.h"
#include "services.h"
#include "tsan.h"

namespace inferline::grpcfe {

namespace {

class UnaryCall final : public grpc::ServerUnaryReactor, public InferJob {
 public:
  UnaryCall(std::shared_ptr<Shared> shared, grpc::CallbackServerContext* ctx, grpc::ByteBuffer* response)
      : InferJob(std::move(shared), Protocol::kUnary, &cancelled_), ctx_(ctx), response_(response) {}

  void OnCancel() override {
    Reaction reaction(this);
    cancelled_.store(true, std::memory_order_relaxed);
    LeaveLobby();  // a waiting request leaves at once (no answer: the call is finished here)
    if (!finished_.exchange(true)) {
      HandOff(this);
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled"));
    }
  }
  void OnDone() override {
    TakeOver(this);
    Unref();  // the RPC's reference
  }

 private:
  void Reply(Answer answer) noexcept override {
    if (finished_.exchange(true)) return;  // cancelled: already finished
    if (answer.retry_after_ms >= 0) ctx_->AddTrailingMetadata("retry-after-ms", std::to_string(answer.retry_after_ms));
    if (answer.status.ok()) response_->Swap(&answer.body);
    HandOff(this);
    Finish(answer.status);
  }

  std::atomic<bool> cancelled_{false};  // InferRequest::cancelled of the job
  std::atomic<bool> finished_{false};   // Finish called (by the answer or by OnCancel)
  grpc::CallbackServerContext* const ctx_;
  grpc::ByteBuffer* const response_;
};

}  // namespace

grpc::ServerUnaryReactor* StartModelInfer(std::shared_ptr<Shared> shared, grpc::CallbackServerContext* ctx,
                                          const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  auto* call = new UnaryCall(std::move(shared), ctx, response);
  call->Run(*request, ctx->deadline());
  HandOff(call);
  return call;
}

}  // namespace inferline::grpcfe
