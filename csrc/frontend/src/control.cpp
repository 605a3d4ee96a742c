// Calls the frontend does not answer itself, handed to the ControlHandler (grpc_frontend.h):
// every inference-service RPC other than ModelInfer/ModelStreamInfer/ServerLive/ServerReady
// (registered as generic methods, so they arrive here as bytes) and health Check of other names.
//
// A forwarded call and its `done` share a Link: `done` finishes the call only while the Link
// still names it. Cancellation (client gone, Shutdown's grace over) finishes the call at once,
// CANCELLED, and unlinks it, so Shutdown never waits for the control plane; a later `done` finds
// no call and is ignored. OnDone unlinks under the same mutex before the reactor is deleted, and
// a `done` that is finishing the call holds that mutex, so the reactor outlives it.
#include <chrono>

#include "pytext.h"
#include "services.h"
#include "tsan.h"

namespace inferline::grpcfe {

namespace {

class Finisher {
 public:
  virtual ~Finisher() = default;
  virtual void Complete(ControlReply reply) = 0;  // requires Link::mu
  virtual void Cancelled() = 0;                   // requires Link::mu
};

struct Link {
  std::mutex mu;
  Finisher* call = nullptr;  // requires mu; null once finished or done
};

grpc::Status StatusOf(const ControlReply& reply) {
  if (reply.code == StatusCode::kOk) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(reply.code)), ClipMessage(reply.message));
}

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

// Hands `call` to the control plane; its reply reaches `link`'s call, if still linked.
void Forward(Shared& shared, ControlCall call, const std::shared_ptr<Link>& link) {
  shared.control->Handle(std::move(call), [link](ControlReply reply) {
    std::lock_guard<std::mutex> lock(link->mu);
    if (Finisher* f = link->call) {
      link->call = nullptr;
      f->Complete(std::move(reply));
    }
  });
}

// A unary call (health Check of a model name).
class ForwardedUnary final : public grpc::ServerUnaryReactor, public Finisher {
 public:
  ForwardedUnary(grpc::CallbackServerContext* ctx, grpc::ByteBuffer* response)
      : ctx_(ctx), response_(response), link_(std::make_shared<Link>()) {
    link_->call = this;
  }
  const std::shared_ptr<Link>& link() const { return link_; }

  void Complete(ControlReply reply) override {
    for (auto& [key, value] : reply.trailers) ctx_->AddTrailingMetadata(key, value);
    if (reply.code == StatusCode::kOk) *response_ = BufferOf(std::move(reply.response));
    HandOff(this);
    Finish(StatusOf(reply));
  }
  void Cancelled() override {
    HandOff(this);
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled"));
  }
  void OnCancel() override {
    Reaction reaction(this);
    std::lock_guard<std::mutex> lock(link_->mu);
    if (link_->call != nullptr) {
      link_->call = nullptr;
      Cancelled();
    }
  }
  void OnDone() override {
    TakeOver(this);
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      link_->call = nullptr;
    }
    delete this;
  }

 private:
  grpc::CallbackServerContext* const ctx_;
  grpc::ByteBuffer* const response_;
  const std::shared_ptr<Link> link_;
};

// A generic call: one request message read, then forwarded (every such RPC is unary).
class ForwardedGeneric final : public ByteBidiReactor, public Finisher {
 public:
  ForwardedGeneric(std::shared_ptr<Shared> shared, grpc::GenericCallbackServerContext* ctx)
      : shared_(std::move(shared)), ctx_(ctx), link_(std::make_shared<Link>()) {}

  void Start() {
    const std::string& method = ctx_->method();
    const std::string prefix = std::string("/") + kInferenceService + "/";
    std::lock_guard<std::mutex> lock(link_->mu);
    if (method.compare(0, prefix.size(), prefix) != 0) {
      HandOff(this);
      Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "Method not found!"));
    } else if (shared_->control == nullptr) {
      HandOff(this);
      Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, method + ": not served by this server (no control plane)"));
    } else {
      link_->call = this;
      HandOff(this);
      StartRead(&request_);
    }
  }

  void OnReadDone(bool ok) override {
    Reaction reaction(this);
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      if (link_->call == nullptr) return;  // cancelled meanwhile
      if (!ok) {
        link_->call = nullptr;
        HandOff(this);
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "no request message"));
        return;
      }
    }
    // Not under the link's mutex: Handle may call `done` at once. The reactor stays valid here
    // even if cancelled meanwhile: OnDone waits for this reaction to return.
    Forward(*shared_, CallOf(*ctx_, ctx_->method(), Flatten(request_)), link_);
  }

  void Complete(ControlReply reply) override {
    for (auto& [key, value] : reply.trailers) ctx_->AddTrailingMetadata(key, value);
    if (reply.code == StatusCode::kOk) {
      response_ = BufferOf(std::move(reply.response));
      HandOff(this);
      StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
    } else {
      HandOff(this);
      Finish(StatusOf(reply));
    }
  }
  void Cancelled() override {
    HandOff(this);
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled"));
  }
  void OnCancel() override {
    Reaction reaction(this);
    std::lock_guard<std::mutex> lock(link_->mu);
    if (link_->call != nullptr) {
      link_->call = nullptr;
      Cancelled();
    }
  }
  void OnDone() override {
    TakeOver(this);
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      link_->call = nullptr;
    }
    delete this;
  }

 private:
  const std::shared_ptr<Shared> shared_;
  grpc::GenericCallbackServerContext* const ctx_;
  const std::shared_ptr<Link> link_;
  grpc::ByteBuffer request_, response_;
};

class ControlService final : public grpc::CallbackGenericService {
 public:
  explicit ControlService(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    auto* call = new ForwardedGeneric(shared_, ctx);
    call->Start();
    HandOff(call);
    return call;
  }

 private:
  const std::shared_ptr<Shared> shared_;
};

}  // namespace

std::unique_ptr<grpc::CallbackGenericService> MakeControlService(std::shared_ptr<Shared> shared) {
  return std::make_unique<ControlService>(std::move(shared));
}

grpc::ServerUnaryReactor* ForwardUnary(std::shared_ptr<Shared> shared, grpc::CallbackServerContext* ctx,
                                       std::string method, const grpc::ByteBuffer& request,
                                       grpc::ByteBuffer* response) {
  if (shared->control == nullptr) {
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, method + ": not served by this server (no control plane)"));
    return reactor;
  }
  auto* call = new ForwardedUnary(ctx, response);
  Forward(*shared, CallOf(*ctx, std::move(method), Flatten(request)), call->link());
  HandOff(call);
  return call;
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
  grpc::Slice slice(owned->data(), owned->size(), [](void* p) { delete static_cast<std::string*>(p); }, owned);
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace inferline::grpcfe
