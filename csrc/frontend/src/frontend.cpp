// GrpcFrontend::Start (grpc_frontend.h). Placeholder while the implementation lands: refuses.
#include "inferline/grpc_frontend.h"

#include "inference.grpc.pb.h"
#include "health.grpc.pb.h"

namespace inferline {

Expected<std::unique_ptr<GrpcFrontend>> GrpcFrontend::Start(Router*, Engine*, const GrpcFrontendOptions&,
                                                            ControlHandler*, RequestTap*) {
  return Status(StatusCode::kUnimplemented, "the native gRPC frontend is not implemented yet");
}

}  // namespace inferline
