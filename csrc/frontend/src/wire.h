// Private: KServe v2 messages <-> the core's tensors, as python/inferline/server/proto/convert.py
// decodes and encodes them (same checks, same messages).
//
// Decode reads a parsed ModelInferRequest without copying tensor bytes where it can: raw
// contents aligned for their dtype and typed contents of the dtype's own width are viewed in
// place (the message must outlive the views); misaligned raw bytes and narrower integer types
// (INT8/16, UINT8/16 carried in 32-bit fields) are copied once into DecodedRequest::owned.
// Encode writes a ModelInferResponse (or a ModelStreamInferResponse around one) straight into a
// grpc::ByteBuffer: the metadata serialized by protobuf, then each output as a
// raw_output_contents entry; large outputs go out as slices over the core's own output memory.
#pragma once

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "inference.pb.h"
#include "inferline/completion.h"
#include "inferline/model.h"
#include "inferline/status.h"
#include "inferline/tensor.h"

namespace inferline::grpcfe {

inline constexpr size_t kMaxDims = 64;          // convert.MAX_DIMS
inline constexpr uint64_t kMaxTimeoutUs = 1ull << 48;  // convert.MAX_TIMEOUT_US
inline constexpr int kFewOutputs = 16;          // grpc_frontend.FEW_OUTPUTS

// One input tensor of the request, by the wire's name/datatype/shape.
struct WireInput {
  const inference::ModelInferRequest::InferInputTensor* tensor = nullptr;
  DataType dtype = DataType::kFloat32;
  const void* data = nullptr;
};

struct DecodedRequest {
  uint64_t priority = 0;                 // KServe: 0 default, 1 highest
  std::optional<uint64_t> timeout_us;    // capped by the gRPC deadline
  bool has_routing_key = false;
  std::string_view routing_key;          // into the message
  std::vector<WireInput> inputs;         // the request's order
  std::vector<Tensor> owned;             // converted or realigned data the views point into
};

// convert.decode_infer_request: parameters, deadline cap, inputs; INVALID_ARGUMENT naming the
// tensor or parameter at fault. deadline_us: µs before the gRPC deadline (nullopt: none).
// check_outputs: also check `outputs` (each once, no extension parameters) here.
Status Decode(const inference::ModelInferRequest& msg, std::optional<uint64_t> deadline_us, bool check_outputs,
              DecodedRequest* out);
// convert._requested_outputs (without the count bound): each output named once, no
// classification or shared-memory parameter.
Status CheckRequestedOutputs(const inference::ModelInferRequest& msg);
// The KServe datatype name ("FP32") of a core dtype.
const char* KServeName(DataType dtype) noexcept;

// Who answered and what to send, for Encode.
struct Answered {
  const ModelConfig* config = nullptr;  // of the version that answered
  const InferResult* result = nullptr;  // OK
  std::string_view id;                  // echoed
  const std::vector<int>* selection = nullptr;  // output indices to send, in order; null: all
};

// The OK answer as a ModelInferResponse, wrapped in a ModelStreamInferResponse when `stream`.
grpc::ByteBuffer EncodeResponse(const Answered& a, bool stream);
// A ModelStreamInferResponse carrying `message`, with model_name/model_version/id of `request`
// when it was parsed (null: refused before parsing).
grpc::ByteBuffer EncodeStreamError(std::string_view message, const inference::ModelInferRequest* request);

}  // namespace inferline::grpcfe
