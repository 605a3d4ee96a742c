// The floor of a refusal in gRPC's C++ server (bench/server/grpc_refusal_floor.py builds and drives it).
//
//   grpc_refusal_floor callback|async|mixed ADDRESS
//
// Answers every call DEADLINE_EXCEEDED at once, without reading its message, through one of the
// server APIs the native frontend could use:
//   callback  a CallbackGenericService (the frontend's API: gRPC runs it on its own threads);
//   async     an AsyncGenericService polled by this one thread from a ServerCompletionQueue;
//   mixed     async, plus one callback method (/floor.Ping/Ping) that no one calls: a frontend
//             that moved only its hot path off the callback API (gRPC then starts its callback
//             threads, which take turns polling the same sockets).
// Prints "ready" once serving; runs until killed.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <memory>
#include <string>

namespace {

const grpc::Status kRefused(grpc::StatusCode::DEADLINE_EXCEEDED, "refused");

class CallbackRefusal final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    struct Refusal final : grpc::ServerGenericBidiReactor {
      Refusal() { Finish(kRefused); }
      void OnDone() override { delete this; }
    };
    return new Refusal();
  }
};

class CallbackPing final : public grpc::Service {  // as protoc's generated code registers a method
 public:
  CallbackPing() {
    AddMethod(new grpc::internal::RpcServiceMethod("/floor.Ping/Ping", grpc::internal::RpcMethod::NORMAL_RPC,
                                                   nullptr));
    MarkMethodRawCallback(0, new grpc::internal::CallbackUnaryHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
                                 [](grpc::CallbackServerContext* ctx, const grpc::ByteBuffer*, grpc::ByteBuffer*) {
                                   auto* reactor = ctx->DefaultReactor();
                                   reactor->Finish(grpc::Status::OK);
                                   return reactor;
                                 }));
  }
};

struct AsyncRefusal {
  grpc::GenericServerContext ctx;
  grpc::GenericServerAsyncReaderWriter stream{&ctx};
  bool finishing = false;
};

void ServeAsync(grpc::AsyncGenericService* service, grpc::ServerCompletionQueue* cq) {
  constexpr int kRequested = 64;  // calls gRPC may start before this thread asks for more
  for (int i = 0; i < kRequested; ++i) {
    auto* call = new AsyncRefusal;
    service->RequestCall(&call->ctx, &call->stream, cq, cq, call);
  }
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) {
    auto* call = static_cast<AsyncRefusal*>(tag);
    if (call->finishing || !ok) {  // answered, or the server is shutting down
      delete call;
      continue;
    }
    auto* next = new AsyncRefusal;
    service->RequestCall(&next->ctx, &next->stream, cq, cq, next);
    call->finishing = true;
    call->stream.Finish(kRefused, call);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (argc != 3 || (mode != "callback" && mode != "async" && mode != "mixed")) {
    std::fprintf(stderr, "usage: %s callback|async|mixed ADDRESS\n", argv[0]);
    return 2;
  }
  grpc::ServerBuilder builder;
  builder.AddListeningPort(argv[2], grpc::InsecureServerCredentials());
  CallbackRefusal callback;
  grpc::AsyncGenericService async;
  CallbackPing ping;
  std::unique_ptr<grpc::ServerCompletionQueue> cq;
  if (mode == "callback") {
    builder.RegisterCallbackGenericService(&callback);
  } else {
    if (mode == "mixed") builder.RegisterService(&ping);
    builder.RegisterAsyncGenericService(&async);
    cq = builder.AddCompletionQueue();
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::fprintf(stderr, "cannot serve on %s\n", argv[2]);
    return 1;
  }
  std::printf("ready\n");
  std::fflush(stdout);
  if (mode == "callback") {
    server->Wait();
  } else {
    ServeAsync(&async, cq.get());
  }
  return 0;
}
