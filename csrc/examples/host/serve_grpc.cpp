// The example host's gRPC mode (serve_grpc.h): Engine + Router + GrpcFrontend, stopped by a signal.
#include "serve_grpc.h"

#include <cstdio>

#ifdef INFERLINE_HOST_GRPC
#include <inferline/engine.h>
#include <inferline/grpc_frontend.h>
#include <inferline/router.h>
#include <inferline/version.h>
#include <signal.h>

#include <memory>
#include <string>

#include "dense_mlp.h"

using namespace inferline;

namespace {

// SIGINT and SIGTERM blocked in this thread and every thread started after it (the engine's
// executors, gRPC's threads), so that sigwait below is the one place they arrive.
sigset_t BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

int WaitForStopSignal(const sigset_t& set) {
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return sig;
}

std::string AddressOf(const std::string& where) {
  return where.find(':') == std::string::npos ? "127.0.0.1:" + where : where;
}

// Serves until a stop signal; the router and engine outlive the frontend.
int ServeLoaded(Engine& engine, const DemoData& data, const std::string& address, const sigset_t& stop) {
  Router router(&engine);
  GrpcFrontendOptions options;
  options.address = address;
  auto frontend = GrpcFrontend::Start(&router, &engine, options, /*control=*/nullptr);
  if (!frontend.ok()) {
    std::fprintf(stderr, "cannot serve gRPC: %s\n", frontend.status().ToString().c_str());
    return 2;
  }
  const std::string bound = address.substr(0, address.rfind(':') + 1) + std::to_string((*frontend)->port());
  std::printf("serving %s v%lld over gRPC on %s (inferline %s, no Python; SIGINT/SIGTERM stops)\n",
              data.model_name.c_str(), static_cast<long long>(data.version), bound.c_str(), INFERLINE_VERSION_STRING);
  std::fflush(stdout);
  const int sig = WaitForStopSignal(stop);
  std::printf("%s: stopping (5 s grace for calls in flight)\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  std::fflush(stdout);
  (*frontend)->Shutdown(/*grace_s=*/5);
  return 0;
}

}  // namespace

int ServeGrpc(const DemoData& data, const std::string& where, uint32_t instances) {
  const sigset_t stop = BlockStopSignals();  // before any thread starts
  Engine engine;
  auto backend = std::make_shared<DenseMlpBackend>(data.w1, data.w2, data.features, data.hidden, data.classes);
  if (Status st = engine.Load(DemoConfig(data, instances), backend); !st.ok()) {
    std::fprintf(stderr, "load failed: %s\n", st.ToString().c_str());
    return 2;
  }
  const int rc = ServeLoaded(engine, data, AddressOf(where), stop);
  engine.Shutdown(/*drain=*/true);
  if (rc == 0) std::printf("stopped\n");
  return rc;
}

#else  // the installed inferline has no inferline::grpc_frontend

int ServeGrpc(const DemoData&, const std::string&, uint32_t) {
  std::fprintf(stderr,
               "--serve: this host was built against an inferline package without its gRPC frontend "
               "(inferline::grpc_frontend; build inferline where CMake finds gRPC)\n");
  return 2;
}

#endif
