// inference.GRPCInferenceService as registered with gRPC: ModelInfer and ModelStreamInfer as raw
// (byte buffer) callback methods, so that admission runs before the message is parsed;
// ServerLive and ServerReady as typed callback methods; every other method generic, so that its
// calls reach the control service (control.cpp) as bytes.
#include "inference.grpc.pb.h"
#include "services.h"

namespace inferline::grpcfe {

namespace {

using Svc = inference::GRPCInferenceService;

using ControlPlaneMethods = Svc::WithGenericMethod_ModelReady<Svc::WithGenericMethod_ServerMetadata<
    Svc::WithGenericMethod_ModelMetadata<Svc::WithGenericMethod_ModelConfig<Svc::WithGenericMethod_ModelStatistics<
        Svc::WithGenericMethod_RepositoryIndex<Svc::WithGenericMethod_RepositoryModelLoad<
            Svc::WithGenericMethod_RepositoryModelUnload<Svc::WithGenericMethod_SystemSharedMemoryStatus<
                Svc::WithGenericMethod_SystemSharedMemoryRegister<Svc::WithGenericMethod_SystemSharedMemoryUnregister<
                    Svc::WithGenericMethod_CudaSharedMemoryStatus<Svc::WithGenericMethod_CudaSharedMemoryRegister<
                        Svc::WithGenericMethod_CudaSharedMemoryUnregister<Svc::WithGenericMethod_TraceSetting<
                            Svc::WithGenericMethod_LogSettings<Svc::Service>>>>>>>>>>>>>>>>;

using NativeMethods = Svc::WithCallbackMethod_ServerLive<Svc::WithCallbackMethod_ServerReady<
    Svc::WithRawCallbackMethod_ModelInfer<Svc::WithRawCallbackMethod_ModelStreamInfer<ControlPlaneMethods>>>>;

class InferenceService final : public NativeMethods {
 public:
  explicit InferenceService(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* ctx, const inference::ServerLiveRequest*,
                                       inference::ServerLiveResponse* response) override {
    response->set_live(true);
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* ctx, const inference::ServerReadyRequest*,
                                        inference::ServerReadyResponse* response) override {
    response->set_ready(shared_->Ready());
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override {
    return StartModelInfer(shared_, ctx, request, response);
  }

  ByteBidiReactor* ModelStreamInfer(grpc::CallbackServerContext* ctx) override {
    return StartModelStreamInfer(shared_, ctx);
  }

 private:
  const std::shared_ptr<Shared> shared_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeInferenceService(std::shared_ptr<Shared> shared) {
  return std::make_unique<InferenceService>(std::move(shared));
}

}  // namespace inferline::grpcfe
