// Calls the frontend does not answer itself: every inference-service RPC other than ModelInfer,
// ModelStreamInfer, ServerLive and ServerReady (registered as generic methods, so they arrive
// here as bytes) and health Check of other names (health.cpp) go to the ControlHandler
// (grpc_frontend.h), on the frontend's ControlThread; server reflection is answered here
// (reflection.cpp); any other method is UNIMPLEMENTED.
//
// A generic call lives until its status is sent (the finish event): a control call until the
// control plane's reply went out, a reflection stream until the client half-closes. A cancelled
// call needs nothing more: its pending operation completes, failed, and a late reply is sent
// into a call that is over, harmlessly.
#include <chrono>

#include "io_sched.h"
#include "pytext.h"
#include "services.h"
#include "tsan.h"

namespace inferline::grpcfe {

namespace {

ControlCall CallOf(const grpc::ServerContextBase& ctx, std::string method, std::string request) {
  ControlCall call;
  call.method = std::move(method);
  call.request = std::move(request);
  for (const auto& [key, value] : ctx.client_metadata()) {
    call.metadata.emplace_back(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
  }
  const auto deadline = ctx.deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    const double left = std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count();
    call.deadline_left_s = left > 0 ? left : 0;
  }
  return call;
}

class GenericCall final {
 public:
  explicit GenericCall(Lane* lane) : shared_(lane->shared), lane_(lane) {}

  void Request() {
    Lane* lane = lane_;
    if (!shared_->gate.Run([&] { lane->generic->RequestCall(&ctx_, &stream_, lane->cq.get(), lane->cq.get(), requested_.tag()); })) {
      delete this;
    }
  }

 private:
  void OnRequested(bool ok) {
    if (!ok) {  // the server is shutting down
      delete this;
      return;
    }
    RequestGeneric(lane_);
    const std::string& method = ctx_.method();
    const std::string prefix = std::string("/") + kInferenceService + "/";
    if (method == kReflectionMethod) {
      reflection_ = true;
      StartRead();
    } else if (method.compare(0, prefix.size(), prefix) != 0) {
      StartFinish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "Method not found!"));
    } else if (shared_->control == nullptr) {
      StartFinish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, method + ": not served by this server (no control plane)"));
    } else {
      StartRead();
    }
  }

  void OnRead(bool ok) {
    if (reflection_) {
      if (!ok) {  // the client half-closed (or went away)
        StartFinish(grpc::Status::OK);
        return;
      }
      response_ = BufferOf(ReflectionAnswer(Flatten(request_)));
      if (!shared_->gate.Run([&] { stream_.Write(response_, written_.tag()); })) delete this;
      return;
    }
    if (!ok) {
      StartFinish(grpc::Status(grpc::StatusCode::CANCELLED, "no request message"));
      return;
    }
    ForwardToControl(*shared_, ctx_, ctx_.method(), Flatten(request_), [this](ControlReply reply) {
      for (auto& [key, value] : reply.trailers) ctx_.AddTrailingMetadata(key, value);
      if (reply.code != StatusCode::kOk) {
        StartFinish(ControlStatus(reply));
        return;
      }
      response_ = BufferOf(std::move(reply.response));
      if (!shared_->gate.Run(
              [&] { stream_.WriteAndFinish(response_, grpc::WriteOptions(), grpc::Status::OK, finished_.tag()); })) {
        delete this;
      }
    });
  }

  void OnWritten(bool ok) {  // a reflection answer
    if (ok) {
      StartRead();
    } else {
      StartFinish(grpc::Status(grpc::StatusCode::CANCELLED, "stream broken"));
    }
  }

  void OnFinished(bool) { delete this; }

  void StartRead() {
    if (!shared_->gate.Run([&] { stream_.Read(&request_, read_.tag()); })) delete this;
  }
  void StartFinish(const grpc::Status& status) {
    if (!shared_->gate.Run([&] { stream_.Finish(status, finished_.tag()); })) delete this;
  }

  const std::shared_ptr<Shared> shared_;
  Lane* const lane_;  // on the lane's thread only
  grpc::GenericServerContext ctx_;
  grpc::GenericServerAsyncReaderWriter stream_{&ctx_};
  bool reflection_ = false;
  grpc::ByteBuffer request_, response_;
  On<GenericCall, &GenericCall::OnRequested> requested_{this};
  On<GenericCall, &GenericCall::OnRead> read_{this};
  On<GenericCall, &GenericCall::OnWritten> written_{this};
  On<GenericCall, &GenericCall::OnFinished> finished_{this};
};

}  // namespace

void RequestGeneric(Lane* lane) { (new GenericCall(lane))->Request(); }

void ForwardToControl(Shared& shared, const grpc::ServerContextBase& ctx, std::string method, std::string request,
                      std::function<void(ControlReply)> finish) {
  shared.control_thread.Post(CallOf(ctx, std::move(method), std::move(request)), std::move(finish));
}

grpc::Status ControlStatus(const ControlReply& reply) {
  if (reply.code == StatusCode::kOk) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(reply.code)), ClipMessage(reply.message));
}

void ControlThread::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void ControlThread::Post(ControlCall call, Finish finish) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      waiting_.emplace_back(std::move(call), std::move(finish));
      cv_.notify_one();
      return;
    }
  }
  finish(ControlReply{StatusCode::kUnavailable, "the server is shutting down", {}, {}});
}

void ControlThread::Loop() {
  NameThisThread("il-control");
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stopping_ || !waiting_.empty(); });
    if (stopping_) return;
    auto [call, finish] = std::move(waiting_.front());
    waiting_.pop_front();
    lock.unlock();
    handler_->Handle(std::move(call), std::move(finish));
    lock.lock();
  }
}

void ControlThread::Stop() {
  std::deque<std::pair<ControlCall, Finish>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    left.swap(waiting_);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (auto& [call, finish] : left) finish(ControlReply{StatusCode::kUnavailable, "the server is shutting down", {}, {}});
}

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

grpc::ByteBuffer BufferOf(std::string bytes) {
  auto* owned = new std::string(std::move(bytes));
  HandOff(owned);  // gRPC frees it on whichever thread sends it
  grpc::Slice slice(
      owned->data(), owned->size(),
      [](void* p) {
        TakeOver(p);
        delete static_cast<std::string*>(p);
      },
      owned);
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace inferline::grpcfe
