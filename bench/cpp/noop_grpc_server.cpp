// bench/cpp/noop_grpc_server.cpp — the C++ gRPC floor for bench/native/compare_frontends.py: a
// server that answers every call, on any method, by echoing each request message back as it came
// (no protobuf parsing, no protoc: gRPC's generic callback API on raw byte buffers).
//
//   noop_grpc_server [--address 127.0.0.1:0]
//
// A unary call (one request message, then the client's half-close) gets its message back and
// status OK; a streaming call gets one answer per request, in order, and OK when the client
// half-closes. Prints "port=N" (the bound port) once it serves; SIGTERM or SIGINT stop it.
//
// Threads: gRPC's callback executor runs the reactors; it sizes its pool to the cores itself
// (there is no per-server thread count in the callback API of grpc++ 1.51).
//
// Built by compare_frontends.py with `g++ -O2 -std=c++17 ... $(pkg-config --cflags --libs grpc++)`
// into build/bench-native/, not through the project's CMakeLists.txt.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

namespace {

// One call: read a message, write it back, read the next; OK at the client's half-close.
// One buffer suffices because a read and a write are never outstanding at the same time.
class EchoReactor final : public grpc::ServerGenericBidiReactor {
 public:
  EchoReactor() { StartRead(&message_); }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed (or the call ended): no more requests
      Finish(grpc::Status::OK);
      return;
    }
    StartWrite(&message_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    StartRead(&message_);
  }

  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer message_;
};

class EchoService final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* /*ctx*/) override {
    return new EchoReactor();
  }
};

int Usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--address HOST:PORT]   (port 0: a free one; default 127.0.0.1:0)\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string address = "127.0.0.1:0";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--address") == 0 && i + 1 < argc) {
      address = argv[++i];
    } else {
      return Usage(argv[0]);
    }
  }
  // Block the stop signals before gRPC starts its threads (they inherit the mask), so that only
  // sigwait below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  EchoService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterCallbackGenericService(&service);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, INT_MAX);
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "noop_grpc_server: cannot listen on %s\n", address.c_str());
    return 1;
  }
  std::printf("port=%d\n", port);
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));  // then cancel what is left
  return 0;
}
