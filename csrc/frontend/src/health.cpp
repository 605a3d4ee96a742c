// ServerLive, ServerReady and grpc.health.v1.Health, natively, on the asynchronous API
// (completion.h): ServerLive is always true; ServerReady and health Check of "" or the inference
// service answer from Shared::Ready(); Check of any other name (a model) goes to the control
// plane. Watch sends the status at once and again whenever SetServing changes it
// (SERVICE_UNKNOWN, once, for other names), one write at a time, and ends OK after NOT_SERVING
// at Shutdown. Each is answered on the lane's thread as soon as it arrives, so no inference
// work is ever ahead of it.
#include <atomic>
#include <mutex>
#include <optional>

#include "services.h"

namespace inferline::grpcfe {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

namespace {

bool IsServerService(const std::string& name) { return name.empty() || name == kInferenceService; }

HealthCheckResponse::ServingStatus StatusOf(const Shared& shared, const std::string& service) {
  if (!IsServerService(service)) return HealthCheckResponse::SERVICE_UNKNOWN;
  return shared.Ready() ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
}

// A unary call answered as it arrives: `Answer` fills the response and returns the status, or
// nothing when the call is answered later (Send, from any thread).
template <class RequestMsg, class Response, auto Ask, class Derived>
class InstantCall {
 public:
  explicit InstantCall(Lane* lane) : shared_(lane->shared), lane_(lane) {}
  virtual ~InstantCall() = default;

  void Request() {
    Lane* lane = lane_;
    if (!shared_->gate.Run([&] { Ask(lane, &ctx_, &request_, &responder_, requested_.tag()); })) delete this;
  }

 protected:
  virtual std::optional<grpc::Status> Answer(Response* response) = 0;
  const std::shared_ptr<Shared> shared_;
  Lane* const lane_;  // on the lane's thread only
  grpc::ServerContext ctx_;
  RequestMsg request_;
  grpc::ServerAsyncResponseWriter<Response> responder_{&ctx_};

  // Sends `response` with `status`; the call is deleted once it went out.
  void Send(const Response& response, const grpc::Status& status) {
    if (!shared_->gate.Run([&] {
          if (status.ok()) {
            responder_.Finish(response, status, finished_.tag());
          } else {
            responder_.FinishWithError(status, finished_.tag());
          }
        })) {
      delete this;
    }
  }

 private:
  void OnRequested(bool ok) {
    if (!ok) {
      delete this;
      return;
    }
    Derived::RequestNext(lane_);
    Response response;
    if (std::optional<grpc::Status> status = Answer(&response)) Send(response, *status);
  }
  void OnFinished(bool) { delete this; }

  On<InstantCall, &InstantCall::OnRequested> requested_{this};
  On<InstantCall, &InstantCall::OnFinished> finished_{this};
};

void AskLive(Lane* lane, grpc::ServerContext* ctx, inference::ServerLiveRequest* request,
             grpc::ServerAsyncResponseWriter<inference::ServerLiveResponse>* responder, void* tag) {
  lane->inference->RequestServerLive(ctx, request, responder, lane->cq.get(), lane->cq.get(), tag);
}
void AskReady(Lane* lane, grpc::ServerContext* ctx, inference::ServerReadyRequest* request,
              grpc::ServerAsyncResponseWriter<inference::ServerReadyResponse>* responder, void* tag) {
  lane->inference->RequestServerReady(ctx, request, responder, lane->cq.get(), lane->cq.get(), tag);
}
void AskCheck(Lane* lane, grpc::ServerContext* ctx, grpc::ByteBuffer* request,
              grpc::ServerAsyncResponseWriter<grpc::ByteBuffer>* responder, void* tag) {
  lane->health->RequestCheck(ctx, request, responder, lane->cq.get(), lane->cq.get(), tag);
}

class LiveCall final : public InstantCall<inference::ServerLiveRequest, inference::ServerLiveResponse, AskLive, LiveCall> {
 public:
  using InstantCall::InstantCall;
  static void RequestNext(Lane* lane) { (new LiveCall(lane))->Request(); }

 private:
  std::optional<grpc::Status> Answer(inference::ServerLiveResponse* response) override {
    response->set_live(true);
    return grpc::Status::OK;
  }
};

class ReadyCall final
    : public InstantCall<inference::ServerReadyRequest, inference::ServerReadyResponse, AskReady, ReadyCall> {
 public:
  using InstantCall::InstantCall;
  static void RequestNext(Lane* lane) { (new ReadyCall(lane))->Request(); }

 private:
  std::optional<grpc::Status> Answer(inference::ServerReadyResponse* response) override {
    response->set_ready(shared_->Ready());
    return grpc::Status::OK;
  }
};

// Check: of the server, answered here; of another name, by the control plane (the call lives
// until that reply is sent; a cancelled call's reply goes nowhere).
class CheckCall final : public InstantCall<grpc::ByteBuffer, grpc::ByteBuffer, AskCheck, CheckCall> {
 public:
  using InstantCall::InstantCall;
  static void RequestNext(Lane* lane) { (new CheckCall(lane))->Request(); }

 private:
  std::optional<grpc::Status> Answer(grpc::ByteBuffer* response) override {
    HealthCheckRequest req;
    if (!req.ParseFromString(Flatten(request_))) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "malformed request message");
    }
    if (IsServerService(req.service())) {
      HealthCheckResponse out;
      out.set_status(StatusOf(*shared_, req.service()));
      *response = BufferOf(out.SerializeAsString());
      return grpc::Status::OK;
    }
    static const std::string kMethod = "/grpc.health.v1.Health/Check";
    if (shared_->control == nullptr) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, kMethod + ": not served by this server (no control plane)");
    }
    ForwardToControl(*shared_, ctx_, kMethod, Flatten(request_), [this](ControlReply reply) {
      for (auto& [key, value] : reply.trailers) ctx_.AddTrailingMetadata(key, value);
      if (reply.code == StatusCode::kOk) {
        Send(BufferOf(std::move(reply.response)), grpc::Status::OK);
      } else {
        Send(grpc::ByteBuffer(), ControlStatus(reply));
      }
    });
    return std::nullopt;
  }
};

}  // namespace

// Watch: one write outstanding; Notify (SetServing's thread, Shutdown) and the events (the
// lane's thread) take mu_. Reference counted: the RPC holds one until its done event (which
// first takes the call out of Shared::watchers, so no Notify reaches it after), and each
// operation outstanding one.
class WatchCall final {
 public:
  explicit WatchCall(Lane* lane) : shared_(lane->shared), lane_(lane) {}

  void Request() {
    ctx_.AsyncNotifyWhenDone(done_.tag());
    Lane* lane = lane_;
    if (!shared_->gate.Run(
            [&] { lane->health->RequestWatch(&ctx_, &request_, &writer_, lane->cq.get(), lane->cq.get(), requested_.tag()); })) {
      delete this;
    }
  }

  // Sends the current status if it changed; `end`: then finish (Shutdown).
  void Notify(bool end) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    ending_ = ending_ || end;
    if (!writing_) WriteOrEndLocked();
  }

 private:
  ~WatchCall() = default;

  void OnRequested(bool ok) {
    if (!ok) {  // no call came, and no done event will
      delete this;
      return;
    }
    RequestHealthWatch(lane_);
    {
      std::lock_guard<std::mutex> lock(shared_->watchers_mu_);
      shared_->watchers.insert(this);
    }
    registered_ = true;
    Notify(shared_->shutting_down.load());
  }

  void OnWritten(bool ok) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!finished_) {
        if (ok) {
          WriteOrEndLocked();
        } else {
          FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "stream broken"));
        }
      }
    }
    Unref();  // the write's
  }

  void OnFinished(bool) { Unref(); }

  void OnDone(bool) {
    if (registered_) {
      std::lock_guard<std::mutex> lock(shared_->watchers_mu_);
      shared_->watchers.erase(this);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      finished_ = true;  // answered, or cancelled: nothing more is sent
    }
    Unref();  // the RPC's
  }

  // Requires mu_ and no write outstanding. A start Shutdown's gate refuses drops its reference
  // without freeing: the caller holds another (the RPC's, or the event's).
  void WriteOrEndLocked() {
    const auto now = StatusOf(*shared_, request_.service());
    if (!sent_any_ || (now != sent_ && now != HealthCheckResponse::SERVICE_UNKNOWN)) {
      sent_any_ = true;
      sent_ = now;
      response_.set_status(now);
      writing_ = true;
      refs_.fetch_add(1, std::memory_order_relaxed);
      if (!shared_->gate.Run([&] { writer_.Write(response_, written_.tag()); })) {
        writing_ = false;
        refs_.fetch_sub(1, std::memory_order_relaxed);
      }
    } else if (ending_) {
      FinishLocked(grpc::Status::OK);
    }
  }
  void FinishLocked(const grpc::Status& status) {
    finished_ = true;
    refs_.fetch_add(1, std::memory_order_relaxed);
    if (!shared_->gate.Run([&] { writer_.Finish(status, finish_.tag()); })) {
      refs_.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  const std::shared_ptr<Shared> shared_;
  Lane* const lane_;  // on the lane's thread only
  grpc::ServerContext ctx_;
  HealthCheckRequest request_;
  grpc::ServerAsyncWriter<HealthCheckResponse> writer_{&ctx_};
  std::atomic<int> refs_{1};
  bool registered_ = false;  // in Shared::watchers; on the lane's thread
  std::mutex mu_;
  HealthCheckResponse response_;  // the write outstanding; requires mu_
  HealthCheckResponse::ServingStatus sent_ = HealthCheckResponse::UNKNOWN;  // requires mu_
  bool sent_any_ = false, writing_ = false, ending_ = false, finished_ = false;  // require mu_
  On<WatchCall, &WatchCall::OnRequested> requested_{this};
  On<WatchCall, &WatchCall::OnWritten> written_{this};
  On<WatchCall, &WatchCall::OnFinished> finish_{this};
  On<WatchCall, &WatchCall::OnDone> done_{this};
};

void RequestServerLive(Lane* lane) { LiveCall::RequestNext(lane); }
void RequestServerReady(Lane* lane) { ReadyCall::RequestNext(lane); }
void RequestHealthCheck(Lane* lane) { CheckCall::RequestNext(lane); }
void RequestHealthWatch(Lane* lane) { (new WatchCall(lane))->Request(); }

void NotifyWatchers(Shared& shared) {
  std::lock_guard<std::mutex> lock(shared.watchers_mu_);
  for (WatchCall* w : shared.watchers) w->Notify(false);
}

void EndWatchers(Shared& shared) {
  std::lock_guard<std::mutex> lock(shared.watchers_mu_);
  for (WatchCall* w : shared.watchers) w->Notify(true);
}

}  // namespace inferline::grpcfe
