// InferResult -> ModelInferResponse bytes (wire.h): convert.encode_infer_response plus the
// response parameters of dataplane.infer, written straight into a grpc::ByteBuffer.
//
// Byte layout: protobuf serializes the response without raw_output_contents (field 6, its last
// field), then each output is appended as one field-6 entry (tag, length, bytes): the same bytes
// protobuf would write for the whole message. A stream answer is that message as field 2 of a
// ModelStreamInferResponse. Outputs of kZeroCopyBytes or more are not copied: their slice points
// at the core's output memory and keeps it alive (Tensor::owner) until gRPC has sent it.
#include <grpcpp/support/slice.h>

#include <google/protobuf/arena.h>

#include <memory>
#include <utility>
#include <vector>

#include "tsan.h"
#include "wire.h"

namespace inferline::grpcfe {

namespace {

constexpr size_t kZeroCopyBytes = 4096;
constexpr uint8_t kTagRawOutput = (6 << 3) | 2;     // ModelInferResponse.raw_output_contents
constexpr uint8_t kTagInferResponse = (2 << 3) | 2;  // ModelStreamInferResponse.infer_response

size_t VarintSize(uint64_t v) noexcept {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

void AppendVarint(std::string* s, uint64_t v) {
  while (v >= 0x80) {
    s->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  s->push_back(static_cast<char>(v));
}

// A slice owning `s` (no copy). gRPC frees it on whichever thread sends it (HandOff: tsan.h).
grpc::Slice SliceOf(std::string&& s) {
  auto* owned = new std::string(std::move(s));
  HandOff(owned);
  return grpc::Slice(
      owned->data(), owned->size(),
      [](void* p) {
        TakeOver(p);
        delete static_cast<std::string*>(p);
      },
      owned);
}

// A slice over a tensor's bytes, keeping its owner alive.
grpc::Slice SliceOf(const Tensor& t) {
  auto* keep = new std::shared_ptr<void>(t.owner);
  HandOff(keep);
  return grpc::Slice(
      t.data, t.ByteSize(),
      [](void* p) {
        TakeOver(p);
        delete static_cast<std::shared_ptr<void>*>(p);
      },
      keep);
}

// The response without its raw contents: names, version, id, parameters, output metadata.
void FillMeta(const Answered& a, const std::vector<int>& picked, inference::ModelInferResponse* meta) {
  const InferResult& r = *a.result;
  std::string version = std::to_string(r.answered_version);
  meta->set_model_name(r.answered_model);
  meta->set_id(std::string(a.id));
  (*meta->mutable_parameters())["routed_to"].set_string_param(r.answered_model + ":" + version);
  if (r.fallback_reason != FallbackReason::kNone) {
    (*meta->mutable_parameters())["fallback_reason"].set_string_param(FallbackReasonName(r.fallback_reason));
  }
  meta->set_model_version(std::move(version));
  for (int idx : picked) {
    const Tensor& t = r.outputs[idx];
    auto* o = meta->add_outputs();
    o->set_name(a.config->outputs[idx].name);
    o->set_datatype(KServeName(t.dtype));
    for (int d = 0; d < t.shape.rank; ++d) o->add_shape(t.shape.dims[d]);
  }
}

}  // namespace

grpc::ByteBuffer EncodeResponse(const Answered& a, bool stream) {
  std::vector<int> picked;
  if (a.selection != nullptr) {
    picked = *a.selection;
  } else {
    for (size_t i = 0; i < a.result->outputs.size(); ++i) picked.push_back(static_cast<int>(i));
  }
  alignas(16) char block[2048];
  google::protobuf::ArenaOptions options;
  options.initial_block = block;
  options.initial_block_size = sizeof block;
  google::protobuf::Arena arena(options);
  auto* meta = google::protobuf::Arena::CreateMessage<inference::ModelInferResponse>(&arena);
  FillMeta(a, picked, meta);
  const size_t meta_bytes = meta->ByteSizeLong();
  size_t inner = meta_bytes;
  for (int idx : picked) {
    const size_t n = a.result->outputs[idx].ByteSize();
    inner += 1 + VarintSize(n) + n;
  }
  std::string head;
  head.reserve((stream ? 1 + VarintSize(inner) : 0) + meta_bytes + 64 * (picked.size() + 1));
  if (stream) {
    head.push_back(static_cast<char>(kTagInferResponse));
    AppendVarint(&head, inner);
  }
  const size_t at = head.size();
  head.resize(at + meta_bytes);
  meta->SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(head.data() + at));
  std::vector<grpc::Slice> slices;
  for (int idx : picked) {
    const Tensor& t = a.result->outputs[idx];
    const size_t n = t.ByteSize();
    head.push_back(static_cast<char>(kTagRawOutput));
    AppendVarint(&head, n);
    if (n < kZeroCopyBytes) {
      head.append(static_cast<const char*>(t.data), n);
      continue;
    }
    slices.push_back(SliceOf(std::move(head)));
    head.clear();
    slices.push_back(SliceOf(t));
  }
  if (!head.empty() || slices.empty()) slices.push_back(SliceOf(std::move(head)));
  return grpc::ByteBuffer(slices.data(), slices.size());
}

grpc::ByteBuffer EncodeStreamError(std::string_view message, const inference::ModelInferRequest* request) {
  inference::ModelStreamInferResponse out;
  out.set_error_message(std::string(message));
  if (request != nullptr) {  // lets a pipelining client match the error to its request
    out.mutable_infer_response()->set_model_name(request->model_name());
    out.mutable_infer_response()->set_model_version(request->model_version());
    out.mutable_infer_response()->set_id(request->id());
  }
  grpc::Slice slice = SliceOf(out.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace inferline::grpcfe
