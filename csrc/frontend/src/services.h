// Private: the services the frontend (frontend.cpp) registers with one grpc::Server, all on the
// asynchronous API (completion.h), and the calls that serve them, each kind in its own file:
// ModelInfer (infer_call.cpp), ModelStreamInfer (stream_call.cpp), ServerLive/ServerReady and
// grpc.health.v1.Health (health.cpp), and every other method through the generic service:
// server reflection (reflection.cpp) and the calls handed to the ControlHandler (control.cpp).
#pragma once

#include <grpcpp/completion_queue.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/byte_buffer.h>

#include <functional>
#include <memory>
#include <string>

#include "health.grpc.pb.h"
#include "inference.grpc.pb.h"
#include "shared.h"

namespace inferline::grpcfe {

using InferenceSvc = inference::GRPCInferenceService;

// inference.GRPCInferenceService: ModelInfer and ModelStreamInfer raw (byte buffers, so that
// admission runs before the message is parsed), ServerLive and ServerReady typed, every other
// method generic (its calls reach the generic service as bytes, and from there the control plane).
using InferenceControlMethods = InferenceSvc::WithGenericMethod_ModelReady<InferenceSvc::WithGenericMethod_ServerMetadata<
    InferenceSvc::WithGenericMethod_ModelMetadata<InferenceSvc::WithGenericMethod_ModelConfig<
        InferenceSvc::WithGenericMethod_ModelStatistics<InferenceSvc::WithGenericMethod_RepositoryIndex<
            InferenceSvc::WithGenericMethod_RepositoryModelLoad<InferenceSvc::WithGenericMethod_RepositoryModelUnload<
                InferenceSvc::WithGenericMethod_SystemSharedMemoryStatus<
                    InferenceSvc::WithGenericMethod_SystemSharedMemoryRegister<
                        InferenceSvc::WithGenericMethod_SystemSharedMemoryUnregister<
                            InferenceSvc::WithGenericMethod_CudaSharedMemoryStatus<
                                InferenceSvc::WithGenericMethod_CudaSharedMemoryRegister<
                                    InferenceSvc::WithGenericMethod_CudaSharedMemoryUnregister<
                                        InferenceSvc::WithGenericMethod_TraceSetting<
                                            InferenceSvc::WithGenericMethod_LogSettings<InferenceSvc::Service>>>>>>>>>>>>>>>>;
using InferenceService = InferenceSvc::WithAsyncMethod_ServerLive<InferenceSvc::WithAsyncMethod_ServerReady<
    InferenceSvc::WithRawMethod_ModelInfer<InferenceSvc::WithRawMethod_ModelStreamInfer<InferenceControlMethods>>>>;

// grpc.health.v1.Health: Check raw (a model's name is forwarded as the bytes came), Watch typed.
using HealthService = grpc::health::v1::Health::WithRawMethod_Check<
    grpc::health::v1::Health::WithAsyncMethod_Watch<grpc::health::v1::Health::Service>>;

// One completion queue and the services whose calls it asks for. Lives until its queue is
// drained; a call uses it only on the queue's thread (to ask for the next call of its kind).
struct Lane {
  std::shared_ptr<Shared> shared;
  std::unique_ptr<grpc::ServerCompletionQueue> cq;
  InferenceService* inference = nullptr;
  HealthService* health = nullptr;
  grpc::AsyncGenericService* generic = nullptr;
};

// Each asks gRPC for one call of its kind on the lane's queue; once one arrives, the call asks
// for the next before it serves its own, so that each lane keeps as many waiting as it asked for
// at start (frontend.cpp: kInferRequested, kOtherRequested).
void RequestModelInfer(Lane* lane);        // infer_call.cpp
void RequestModelStreamInfer(Lane* lane);  // stream_call.cpp
void RequestServerLive(Lane* lane);        // health.cpp
void RequestServerReady(Lane* lane);
void RequestHealthCheck(Lane* lane);
void RequestHealthWatch(Lane* lane);
void RequestGeneric(Lane* lane);           // control.cpp

// Ends the open streams idle for options.stream_idle_timeout_s (the watchdog's scan).
void CheckIdleStreams(Shared& shared);

// Health Watch calls: send the current status (after SetServing), or NOT_SERVING and end (Shutdown).
void NotifyWatchers(Shared& shared);
void EndWatchers(Shared& shared);

// Hands a unary call to the control plane (control.cpp), on the frontend's ControlThread:
// health Check of a model's name, or a generic call once its request is read. `finish(reply)`
// answers it exactly once, from any thread: the ControlHandler's reply, or UNAVAILABLE when the
// frontend stops first. The call must stay alive until then.
void ForwardToControl(Shared& shared, const grpc::ServerContextBase& ctx, std::string method, std::string request,
                      std::function<void(ControlReply)> finish);
// The gRPC status a control reply is answered with (its message clipped).
grpc::Status ControlStatus(const ControlReply& reply);

// Server reflection (grpc.reflection.v1alpha, reflection.cpp): the serialized
// ServerReflectionResponse to a serialized ServerReflectionRequest. The generic call serves it.
inline constexpr char kReflectionMethod[] = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
std::string ReflectionAnswer(const std::string& request);

// The bytes of a buffer, in one string.
std::string Flatten(const grpc::ByteBuffer& buffer);
// A buffer holding `bytes` (moved, not copied).
grpc::ByteBuffer BufferOf(std::string bytes);

}  // namespace inferline::grpcfe
