// Private: the pieces the frontend (frontend.cpp) assembles into one grpc::Server, each in its
// own file: the inference service (inference_service.cpp; ModelInfer in infer_call.cpp,
// ModelStreamInfer in stream_call.cpp), grpc.health.v1.Health (health.cpp) and the generic
// service that hands every other call to the ControlHandler (control.cpp).
#pragma once

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/impl/service_type.h>
#include <grpcpp/support/server_callback.h>

#include <memory>
#include <string>

#include "shared.h"

namespace inferline::grpcfe {

using ByteBidiReactor = grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>;

std::unique_ptr<grpc::Service> MakeInferenceService(std::shared_ptr<Shared> shared);
std::unique_ptr<grpc::Service> MakeHealthService(std::shared_ptr<Shared> shared);
std::unique_ptr<grpc::CallbackGenericService> MakeControlService(std::shared_ptr<Shared> shared);

// ModelInfer: one InferJob answered through a unary reactor (infer_call.cpp).
grpc::ServerUnaryReactor* StartModelInfer(std::shared_ptr<Shared> shared, grpc::CallbackServerContext* ctx,
                                          const grpc::ByteBuffer* request, grpc::ByteBuffer* response);
// ModelStreamInfer (stream_call.cpp).
ByteBidiReactor* StartModelStreamInfer(std::shared_ptr<Shared> shared, grpc::CallbackServerContext* ctx);
// Ends the open streams idle for options.stream_idle_timeout_s (the watchdog's scan).
void CheckIdleStreams(Shared& shared);

// Health Watch calls: send the current status (after SetServing), or NOT_SERVING and end (Shutdown).
void NotifyWatchers(Shared& shared);
void EndWatchers(Shared& shared);

// A unary call handed to the ControlHandler (control.cpp): `request` forwarded as it came.
grpc::ServerUnaryReactor* ForwardUnary(std::shared_ptr<Shared> shared, grpc::CallbackServerContext* ctx,
                                       std::string method, const grpc::ByteBuffer& request,
                                       grpc::ByteBuffer* response);

// The bytes of a buffer, in one string.
std::string Flatten(const grpc::ByteBuffer& buffer);
// A buffer holding `bytes` (moved, not copied).
grpc::ByteBuffer BufferOf(std::string bytes);

}  // namespace inferline::grpcfe
