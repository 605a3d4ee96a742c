// ModelInfer: an InferJob answered through an asynchronous unary call (completion.h).
//
// Events, all on the lane's thread: `requested_` (the call and its request arrived: the job
// runs), `done_` (the call is over: answered, or cancelled by its client or by Shutdown's grace
// running out) and `finished_` (the answer went out). The answer is sent from whichever thread
// produced it (InferJob::Reply). The call is answered at most once: the answer and a
// cancellation race for `answered_`; a cancelled call's request is withdrawn
// (InferRequest::cancelled, and the lobby) and its late answer dropped.
//
// References (InferJob's count): the RPC's, from creation until `done_` (or a request that never
// came, at Shutdown); one for `finished_` while the answer is being sent; and the job's own
// (the lobby's, the core's).
#include <string>

#include "infer_job.h"
#include "services.h"

namespace inferline::grpcfe {

namespace {

class UnaryCall final : public InferJob {
 public:
  explicit UnaryCall(Lane* lane) : InferJob(lane->shared, Protocol::kUnary, &cancelled_), lane_(lane) {}

  void Request() {
    ctx_.AsyncNotifyWhenDone(done_.tag());
    Lane* lane = lane_;
    if (!shared_->gate.Run([&] {
          lane->inference->RequestModelInfer(&ctx_, &request_, &responder_, lane->cq.get(), lane->cq.get(), requested_.tag());
        })) {
      Unref();
    }
  }

 private:
  void OnRequested(bool ok) {
    if (!ok) {  // the server is shutting down: no call came, and no done event will
      Unref();
      return;
    }
    RequestModelInfer(lane_);
    grpc::ByteBuffer raw;
    raw.Swap(&request_);
    Run(raw, ctx_.deadline());
  }

  void OnDone(bool) {
    if (ctx_.IsCancelled()) {
      cancelled_.store(true, std::memory_order_relaxed);
      answered_.store(true, std::memory_order_relaxed);  // nothing is sent now
      LeaveLobby();  // a waiting request leaves at once
    }
    Unref();  // the RPC's
  }

  void OnFinished(bool) { Unref(); }

  void Reply(Answer answer) noexcept override {
    if (answered_.exchange(true)) return;  // cancelled: nothing to send
    if (answer.retry_after_ms >= 0) ctx_.AddTrailingMetadata("retry-after-ms", std::to_string(answer.retry_after_ms));
    Ref();  // finished_'s
    const bool started = shared_->gate.Run([&] {
      if (answer.status.ok()) {
        responder_.Finish(answer.body, grpc::Status::OK, finished_.tag());
      } else {
        responder_.FinishWithError(answer.status, finished_.tag());
      }
    });
    if (!started) Unref();
  }

  Lane* const lane_;  // on the lane's thread only
  grpc::ServerContext ctx_;
  grpc::ByteBuffer request_;
  grpc::ServerAsyncResponseWriter<grpc::ByteBuffer> responder_{&ctx_};
  std::atomic<bool> cancelled_{false};  // InferRequest::cancelled of the job
  std::atomic<bool> answered_{false};   // the answer was sent, or the call was cancelled
  On<UnaryCall, &UnaryCall::OnRequested> requested_{this};
  On<UnaryCall, &UnaryCall::OnDone> done_{this};
  On<UnaryCall, &UnaryCall::OnFinished> finished_{this};
};

}  // namespace

void RequestModelInfer(Lane* lane) { (new UnaryCall(lane))->Request(); }

}  // namespace inferline::grpcfe
