// serve_grpc.h — the example host as a gRPC server, no Python anywhere:
//
//   digits_host DEMO_FILE --serve PORT            (127.0.0.1:PORT; 0 = a free port)
//   digits_host DEMO_FILE --serve HOST:PORT       (e.g. 0.0.0.0:8001)
//
// Loads the demo dense MLP into an inferline::Engine, routes through an inferline::Router (no
// policy published: requests go straight to the loaded version) and serves KServe v2
// inference.GRPCInferenceService with the native frontend (inferline/grpc_frontend.h):
// ModelInfer, ModelStreamInfer, ServerLive/Ready and health; the other RPCs (metadata, config,
// repository) answer UNIMPLEMENTED, there being no control plane. Prints one line
//   serving MODEL vVERSION over gRPC on HOST:PORT (...)
// once bound, serves until SIGINT or SIGTERM, then shuts down (5 s grace for calls in flight).
// Exit status 0 after a clean stop; 2 if the model cannot load or the port cannot be bound, or
// when the inferline package was built without its gRPC frontend.
#pragma once

#include <cstdint>
#include <string>

#include "demo_file.h"

int ServeGrpc(const DemoData& data, const std::string& where, uint32_t instances);
