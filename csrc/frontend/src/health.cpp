// grpc.health.v1.Health, natively: Check of "" or the inference service answers from
// Shared::Ready(); Check of any other name (a model) goes to the control plane (ForwardUnary).
// Watch sends the status at once and again whenever SetServing changes it (SERVICE_UNKNOWN, once,
// for other names), one write at a time, and ends OK after NOT_SERVING at Shutdown.
#include "health.grpc.pb.h"
#include "services.h"
#include "tsan.h"

namespace inferline::grpcfe {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

namespace {

bool IsServerService(const std::string& name) { return name.empty() || name == kInferenceService; }

HealthCheckResponse::ServingStatus StatusOf(const Shared& shared, const std::string& service) {
  if (!IsServerService(service)) return HealthCheckResponse::SERVICE_UNKNOWN;
  return shared.Ready() ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
}

}  // namespace

class WatchCall final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  WatchCall(std::shared_ptr<Shared> shared, std::string service)
      : shared_(std::move(shared)), service_(std::move(service)) {}

  void Start() {
    {
      std::lock_guard<std::mutex> lock(shared_->watchers_mu_);
      shared_->watchers.insert(this);
    }
    Notify(shared_->shutting_down.load());
  }

  // Sends the current status if it changed; `end`: then finish (Shutdown).
  void Notify(bool end) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    ending_ = ending_ || end;
    if (!writing_) WriteOrEndLocked();
  }

  void OnWriteDone(bool ok) override {
    Reaction reaction(this);
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (finished_) return;
    if (!ok) {
      finished_ = true;
      HandOff(this);
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream broken"));
      return;
    }
    WriteOrEndLocked();
  }

  void OnCancel() override {
    Reaction reaction(this);
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = true;
    HandOff(this);
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled"));
  }

  void OnDone() override {
    TakeOver(this);
    {
      std::lock_guard<std::mutex> lock(shared_->watchers_mu_);
      shared_->watchers.erase(this);
    }
    delete this;
  }

 private:
  // Requires mu_ and no write outstanding.
  void WriteOrEndLocked() {
    const auto now = StatusOf(*shared_, service_);
    if (!sent_any_ || (now != sent_ && now != HealthCheckResponse::SERVICE_UNKNOWN)) {
      sent_any_ = true;
      sent_ = now;
      response_.set_status(now);
      writing_ = true;
      HandOff(this);
      StartWrite(&response_);
    } else if (ending_) {
      finished_ = true;
      HandOff(this);
      Finish(grpc::Status::OK);
    }
  }

  const std::shared_ptr<Shared> shared_;
  const std::string service_;
  std::mutex mu_;
  HealthCheckResponse response_;  // the write outstanding; requires mu_
  HealthCheckResponse::ServingStatus sent_ = HealthCheckResponse::UNKNOWN;  // requires mu_
  bool sent_any_ = false, writing_ = false, ending_ = false, finished_ = false;  // require mu_
};

namespace {

using HealthBase = grpc::health::v1::Health::WithRawCallbackMethod_Check<
    grpc::health::v1::Health::WithCallbackMethod_Watch<grpc::health::v1::Health::Service>>;

class HealthService final : public HealthBase {
 public:
  explicit HealthService(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override {
    HealthCheckRequest req;
    if (!req.ParseFromString(Flatten(*request))) {
      auto* reactor = ctx->DefaultReactor();
      reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "malformed request message"));
      return reactor;
    }
    if (!IsServerService(req.service())) {
      return ForwardUnary(shared_, ctx, "/grpc.health.v1.Health/Check", *request, response);
    }
    HealthCheckResponse out;
    out.set_status(StatusOf(*shared_, req.service()));
    *response = BufferOf(out.SerializeAsString());
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerWriteReactor<HealthCheckResponse>* Watch(grpc::CallbackServerContext*,
                                                       const HealthCheckRequest* request) override {
    auto* call = new WatchCall(shared_, request->service());
    call->Start();
    HandOff(call);
    return call;
  }

 private:
  const std::shared_ptr<Shared> shared_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeHealthService(std::shared_ptr<Shared> shared) {
  return std::make_unique<HealthService>(std::move(shared));
}

void NotifyWatchers(Shared& shared) {
  std::lock_guard<std::mutex> lock(shared.watchers_mu_);
  for (WatchCall* w : shared.watchers) w->Notify(false);
}

void EndWatchers(Shared& shared) {
  std::lock_guard<std::mutex> lock(shared.watchers_mu_);
  for (WatchCall* w : shared.watchers) w->Notify(true);
}

}  // namespace inferline::grpcfe
