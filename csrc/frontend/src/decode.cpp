// ModelInferRequest -> DecodedRequest (wire.h): convert.decode_infer_request's checks and messages.
#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "pytext.h"
#include "wire.h"

namespace inferline::grpcfe {

namespace {

using InputTensor = inference::ModelInferRequest::InferInputTensor;
using Param = inference::InferParameter;
using Dims = google::protobuf::RepeatedField<int64_t>;

struct WireType {
  const char* name;         // KServe
  DataType dtype;
  const char* field;        // typed contents field; null: raw only
  const char* numpy;        // NumPy's name, for range errors
};

constexpr WireType kWireTypes[] = {
    {"BOOL", DataType::kBool, "bool_contents", "bool"},
    {"UINT8", DataType::kUInt8, "uint_contents", "uint8"},
    {"UINT16", DataType::kUInt16, "uint_contents", "uint16"},
    {"UINT32", DataType::kUInt32, "uint_contents", "uint32"},
    {"UINT64", DataType::kUInt64, "uint64_contents", "uint64"},
    {"INT8", DataType::kInt8, "int_contents", "int8"},
    {"INT16", DataType::kInt16, "int_contents", "int16"},
    {"INT32", DataType::kInt32, "int_contents", "int32"},
    {"INT64", DataType::kInt64, "int64_contents", "int64"},
    {"FP16", DataType::kFloat16, nullptr, "float16"},
    {"FP32", DataType::kFloat32, "fp32_contents", "float32"},
    {"FP64", DataType::kFloat64, "fp64_contents", "float64"},
};

const WireType* FindWireType(std::string_view name) noexcept {
  for (const WireType& t : kWireTypes) {
    if (name == t.name) return &t;
  }
  return nullptr;
}

alignas(64) const char kEmpty[64] = {};  // data of empty typed contents

std::string Where(const inference::ModelInferRequest& msg, const InputTensor& t) {
  return "model " + Quote(msg.model_name()) + " input " + Quote(t.name());
}

// ---- parameters ---------------------------------------------------------------
const char* KindName(const Param& p) noexcept {
  switch (p.parameter_choice_case()) {
    case Param::kBoolParam: return "bool_param";
    case Param::kInt64Param: return "int64_param";
    case Param::kStringParam: return "string_param";
    case Param::kDoubleParam: return "double_param";
    case Param::kUint64Param: return "uint64_param";
    default: return "None";
  }
}

std::string ValueRepr(const Param& p) {
  switch (p.parameter_choice_case()) {
    case Param::kBoolParam: return p.bool_param() ? "True" : "False";
    case Param::kInt64Param: return std::to_string(p.int64_param());
    case Param::kStringParam: return PyRepr(p.string_param());
    case Param::kDoubleParam: return PyFloatRepr(p.double_param());
    case Param::kUint64Param: return std::to_string(p.uint64_param());
    default: return "None";
  }
}

// A non-negative integer parameter's value; false if it is not one.
bool NonNegative(const Param& p, uint64_t* value) noexcept {
  if (p.parameter_choice_case() == Param::kUint64Param) {
    *value = p.uint64_param();
    return true;
  }
  if (p.parameter_choice_case() == Param::kInt64Param && p.int64_param() >= 0) {
    *value = static_cast<uint64_t>(p.int64_param());
    return true;
  }
  return false;
}

bool Truthy(const Param& p) noexcept {
  switch (p.parameter_choice_case()) {
    case Param::kBoolParam: return p.bool_param();
    case Param::kInt64Param: return p.int64_param() != 0;
    case Param::kStringParam: return !p.string_param().empty();
    case Param::kDoubleParam: return p.double_param() != 0.0;
    case Param::kUint64Param: return p.uint64_param() != 0;
    default: return false;
  }
}

Status ReadParameter(const std::string& model, const std::string& key, const Param& p, DecodedRequest* out) {
  const auto where = [&] { return "model " + Quote(model) + " parameter"; };
  uint64_t value = 0;
  if (key == "priority") {
    if (!NonNegative(p, &value)) {
      return InvalidArgument(where() + " 'priority': expected a non-negative integer, got " + KindName(p) + " " +
                             ValueRepr(p));
    }
    out->priority = value;
  } else if (key == "timeout") {
    if (!NonNegative(p, &value)) {
      return InvalidArgument(where() + " 'timeout': expected microseconds as int64, got " + KindName(p) + " " +
                             ValueRepr(p));
    }
    out->timeout_us = value > 0 && value <= kMaxTimeoutUs ? std::optional<uint64_t>(value) : std::nullopt;
  } else if (key == "sequence_id") {
    if (Truthy(p)) {
      return InvalidArgument("model " + Quote(model) + ": sequences (sequence_id " + ValueRepr(p) +
                             ") are not supported");
    }
  } else if (key == "routing_key") {
    if (p.parameter_choice_case() != Param::kStringParam) {
      return InvalidArgument(where() + " 'routing_key': expected a string_param, got " + KindName(p));
    }
    out->has_routing_key = true;
    out->routing_key = p.string_param();
  }
  return Status::Ok();
}

// ---- tensors ------------------------------------------------------------------
// Elements of `dims` (all >= 0); false when the count overflows 64 bits (it is then not 0).
bool ElementCount(const Dims& dims, uint64_t itemsize, uint64_t* out) noexcept {
  if (std::find(dims.begin(), dims.end(), 0) != dims.end()) {
    *out = 0;
    return true;
  }
  uint64_t n = itemsize;
  for (int64_t d : dims) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  *out = n;
  return true;
}

bool HasNegative(const Dims& dims) noexcept {
  return std::any_of(dims.begin(), dims.end(), [](int64_t d) { return d < 0; });
}

std::string DimsText(const Dims& dims, bool elide = false) { return PyIntList(dims.data(), dims.size(), elide); }

// NumPy refuses an array whose non-zero dimensions times its itemsize pass 2**63 - 1 bytes, even
// one without elements (e.g. [2**63 - 1, 0]): so does this frontend, before any row reaches the core.
bool TooBig(const Dims& dims, uint64_t itemsize) noexcept {
  uint64_t n = itemsize;
  for (int64_t d : dims) {
    if (d == 0) continue;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n) || n > static_cast<uint64_t>(INT64_MAX)) return true;
  }
  return false;
}

std::string TooBigText(const std::string& where, const Dims& dims) {
  return where + ": shape " + DimsText(dims, true) +
         " cannot be used (array is too big; `arr.size * arr.dtype.itemsize` is larger than the maximum possible "
         "size.)";
}

std::string TooManyDims(const std::string& where, const Dims& dims) {
  return where + ": shape has " + std::to_string(dims.size()) + " dimensions (at most " + std::to_string(kMaxDims) + ")";
}

Status FromRaw(const inference::ModelInferRequest& msg, const InputTensor& t, const std::string& raw,
               DecodedRequest* out) {
  const Dims& dims = t.shape();
  if (static_cast<size_t>(dims.size()) > kMaxDims) return InvalidArgument(TooManyDims(Where(msg, t), dims));
  const WireType* wt = FindWireType(t.datatype());
  uint64_t bytes = 0;
  const bool sized = wt != nullptr && !HasNegative(dims) && ElementCount(dims, DataTypeSize(wt->dtype), &bytes) &&
                     bytes == raw.size();
  if (sized && !TooBig(dims, DataTypeSize(wt->dtype))) {
    const void* data = raw.data();
    if (reinterpret_cast<uintptr_t>(data) % DataTypeSize(wt->dtype) != 0) {  // one copy, aligned
      Tensor copy = Tensor::Allocate(DataType::kUInt8, Shape{static_cast<int64_t>(bytes)});
      std::memcpy(copy.data, data, bytes);
      data = copy.data;
      out->owned.push_back(std::move(copy));
    }
    out->inputs.push_back(WireInput{&t, wt->dtype, raw.empty() ? kEmpty : data});
    return Status::Ok();
  }
  const std::string where = Where(msg, t);
  if (wt == nullptr) return InvalidArgument(where + ": unsupported datatype " + PyRepr(t.datatype()));
  if (HasNegative(dims)) return InvalidArgument(where + ": shape " + DimsText(dims) + " has a negative dimension");
  if (sized) return InvalidArgument(TooBigText(where, dims));
  return InvalidArgument(where + ": " + std::to_string(raw.size()) + " bytes of data for " + t.datatype() + " " +
                         DimsText(dims) + ", which needs " +
                         DecimalProduct(dims.data(), dims.size(), DataTypeSize(wt->dtype)) + " bytes");
}

// Narrows 32-bit typed contents into `Out` (INT8/16, UINT8/16), refusing a value out of range
// as NumPy does; appends the copy to out->owned and returns its data.
template <class Out, class In>
Status Narrow(const google::protobuf::RepeatedField<In>& values, const WireType& wt, const std::string& where,
              DecodedRequest* out, const void** data) {
  for (In v : values) {
    if (v < static_cast<In>(std::numeric_limits<Out>::min()) || v > static_cast<In>(std::numeric_limits<Out>::max())) {
      return InvalidArgument(where + ": data does not fit " + wt.name + ": Python integer " + std::to_string(v) +
                             " out of bounds for " + wt.numpy);
    }
  }
  if (values.empty()) {
    *data = kEmpty;
    return Status::Ok();
  }
  Tensor copy = Tensor::Allocate(wt.dtype, Shape{static_cast<int64_t>(values.size())});
  std::copy(values.begin(), values.end(), static_cast<Out*>(copy.data));
  *data = copy.data;
  out->owned.push_back(std::move(copy));
  return Status::Ok();
}

template <class T>
const void* InPlace(const google::protobuf::RepeatedField<T>& values, int* count) noexcept {
  *count = values.size();
  return values.empty() ? static_cast<const void*>(kEmpty) : static_cast<const void*>(values.data());
}

// The typed values of `t` (its dtype's field) as contiguous data; *count: how many.
Status TypedValues(const InputTensor& t, const WireType& wt, const std::string& where, DecodedRequest* out,
                   const void** data, int* count) {
  const inference::InferTensorContents& c = t.contents();
  switch (wt.dtype) {
    case DataType::kBool: *data = InPlace(c.bool_contents(), count); return Status::Ok();
    case DataType::kInt32: *data = InPlace(c.int_contents(), count); return Status::Ok();
    case DataType::kInt64: *data = InPlace(c.int64_contents(), count); return Status::Ok();
    case DataType::kUInt32: *data = InPlace(c.uint_contents(), count); return Status::Ok();
    case DataType::kUInt64: *data = InPlace(c.uint64_contents(), count); return Status::Ok();
    case DataType::kFloat32: *data = InPlace(c.fp32_contents(), count); return Status::Ok();
    case DataType::kFloat64: *data = InPlace(c.fp64_contents(), count); return Status::Ok();
    case DataType::kInt8: *count = c.int_contents_size(); return Narrow<int8_t>(c.int_contents(), wt, where, out, data);
    case DataType::kInt16: *count = c.int_contents_size(); return Narrow<int16_t>(c.int_contents(), wt, where, out, data);
    case DataType::kUInt8: *count = c.uint_contents_size(); return Narrow<uint8_t>(c.uint_contents(), wt, where, out, data);
    case DataType::kUInt16: *count = c.uint_contents_size(); return Narrow<uint16_t>(c.uint_contents(), wt, where, out, data);
    default: return InvalidArgument(where + ": " + wt.name + " has no typed contents field");
  }
}

Status FromContents(const inference::ModelInferRequest& msg, const InputTensor& t, DecodedRequest* out) {
  const WireType* wt = FindWireType(t.datatype());
  if (wt == nullptr || wt->field == nullptr) {
    if (t.datatype() == "FP16" || t.datatype() == "BF16") {
      return InvalidArgument(Where(msg, t) + ": " + t.datatype() + " data must be sent in raw_input_contents");
    }
    return InvalidArgument(Where(msg, t) + ": unsupported datatype " + PyRepr(t.datatype()));
  }
  if (!t.has_contents()) {
    return InvalidArgument(Where(msg, t) + ": no data (send raw_input_contents or contents." + wt->field + ")");
  }
  const Dims& dims = t.shape();
  if (static_cast<size_t>(dims.size()) > kMaxDims) return InvalidArgument(TooManyDims(Where(msg, t), dims));
  if (HasNegative(dims)) {
    return InvalidArgument(Where(msg, t) + ": shape " + DimsText(dims) + " has a negative dimension");
  }
  const void* data = nullptr;
  int count = 0;
  INFERLINE_RETURN_IF_ERROR(TypedValues(t, *wt, Where(msg, t), out, &data, &count));
  uint64_t needed = 0;
  if (!ElementCount(dims, 1, &needed) || needed != static_cast<uint64_t>(count)) {
    return InvalidArgument(Where(msg, t) + ": " + std::to_string(count) + " values for " + t.datatype() + " " +
                           DimsText(dims) + ", which needs " + DecimalProduct(dims.data(), dims.size(), 1));
  }
  if (TooBig(dims, DataTypeSize(wt->dtype))) return InvalidArgument(TooBigText(Where(msg, t), dims));
  out->inputs.push_back(WireInput{&t, wt->dtype, data});
  return Status::Ok();
}

Status DecodeInputs(const inference::ModelInferRequest& msg, DecodedRequest* out) {
  const int raw_count = msg.raw_input_contents_size();
  if (raw_count != 0 && raw_count != msg.inputs_size()) {
    return InvalidArgument("model " + Quote(msg.model_name()) + ": " + std::to_string(raw_count) +
                           " raw_input_contents for " + std::to_string(msg.inputs_size()) +
                           " inputs (give one per input, in the order of `inputs`)");
  }
  out->inputs.reserve(msg.inputs_size());
  for (int i = 0; i < msg.inputs_size(); ++i) {
    const InputTensor& t = msg.inputs(i);
    if (!t.parameters().empty() && t.parameters().count("shared_memory_region") != 0) {
      return InvalidArgument(Where(msg, t) + ": shared memory is not supported; send the data in the request");
    }
    if (raw_count != 0) {
      if (t.has_contents()) return InvalidArgument(Where(msg, t) + ": has both contents and raw_input_contents");
      INFERLINE_RETURN_IF_ERROR(FromRaw(msg, t, msg.raw_input_contents(i), out));
    } else {
      INFERLINE_RETURN_IF_ERROR(FromContents(msg, t, out));
    }
  }
  return Status::Ok();
}

// Each name once: a set only past kFewOutputs names (a pairwise check allocates nothing).
bool SeenBefore(const inference::ModelInferRequest& msg, int i, std::unordered_set<std::string_view>* seen) {
  const std::string& name = msg.outputs(i).name();
  if (msg.outputs_size() > kFewOutputs) return !seen->insert(name).second;
  for (int j = 0; j < i; ++j) {
    if (msg.outputs(j).name() == name) return true;
  }
  return false;
}

}  // namespace

const char* KServeName(DataType dtype) noexcept {
  for (const WireType& t : kWireTypes) {
    if (t.dtype == dtype) return t.name;
  }
  return "BYTES";
}

Status CheckRequestedOutputs(const inference::ModelInferRequest& msg) {
  std::unordered_set<std::string_view> seen;
  for (int i = 0; i < msg.outputs_size(); ++i) {
    const auto& o = msg.outputs(i);
    if (SeenBefore(msg, i, &seen)) {
      return InvalidArgument("model " + Quote(msg.model_name()) + " output " + Quote(o.name()) +
                             ": requested twice (name each output at most once)");
    }
    const auto& params = o.parameters();
    if (!params.empty() && (params.count("classification") != 0 || params.count("shared_memory_region") != 0)) {
      return InvalidArgument("model " + Quote(msg.model_name()) + " output " + Quote(o.name()) +
                             ": the classification and shared-memory extensions are not supported");
    }
  }
  return Status::Ok();
}

Status Decode(const inference::ModelInferRequest& msg, std::optional<uint64_t> deadline_us, bool check_outputs,
              DecodedRequest* out) {
  for (const auto& [key, param] : msg.parameters()) {
    INFERLINE_RETURN_IF_ERROR(ReadParameter(msg.model_name(), key, param, out));
  }
  if (deadline_us) out->timeout_us = out->timeout_us ? std::min(*out->timeout_us, *deadline_us) : *deadline_us;
  INFERLINE_RETURN_IF_ERROR(DecodeInputs(msg, out));
  if (check_outputs && msg.outputs_size() != 0) return CheckRequestedOutputs(msg);
  return Status::Ok();
}

}  // namespace inferline::grpcfe
