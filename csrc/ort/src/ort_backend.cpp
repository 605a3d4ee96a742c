// ONNX Runtime through its C API, loaded with dlopen (inferline/ort_backend.h).
#include "inferline/ort_backend.h"

#include <dlfcn.h>

#include <map>
#include <mutex>

#include <onnxruntime_c_api.h>

namespace inferline {
namespace {

Status Failed(std::string msg) { return Status(StatusCode::kFailedPrecondition, std::move(msg)); }

// One loaded library: its API table and the process-wide environment sessions are created in.
struct Runtime {
  const OrtApi* api = nullptr;
  OrtEnv* env = nullptr;
  OrtMemoryInfo* cpu = nullptr;
  std::string version;
};

// Libraries by path, loaded once and kept (ONNX Runtime's global state outlives any session;
// unloading it while a thread pool may still wind down is not worth the risk).
Status LoadRuntime(const std::string& library, const Runtime** out) {
  static std::mutex mu;
  static std::map<std::string, Runtime> loaded;
  std::lock_guard<std::mutex> lock(mu);
  auto it = loaded.find(library);
  if (it != loaded.end()) {
    *out = &it->second;
    return Status::Ok();
  }
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return Failed("cannot load ONNX Runtime library " + library + ": " + (why ? why : "dlopen failed"));
  }
  using GetApiBase = const OrtApiBase* (*)();
  auto get_base = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
  if (get_base == nullptr) return Failed(library + " has no OrtGetApiBase: not an ONNX Runtime library");
  const OrtApiBase* base = get_base();
  Runtime rt;
  rt.version = base->GetVersionString();
  rt.api = base->GetApi(ORT_API_VERSION);
  if (rt.api == nullptr) {
    return Failed("ONNX Runtime " + rt.version + " at " + library + " lacks C API version " +
                  std::to_string(ORT_API_VERSION) + " (this build's): upgrade onnxruntime");
  }
  OrtStatus* st = rt.api->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "inferline", &rt.env);
  if (st == nullptr) st = rt.api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &rt.cpu);
  if (st != nullptr) {
    std::string msg = rt.api->GetErrorMessage(st);
    rt.api->ReleaseStatus(st);
    return Failed("ONNX Runtime " + rt.version + ": cannot create its environment: " + msg);
  }
  *out = &loaded.emplace(library, std::move(rt)).first->second;
  return Status::Ok();
}

const char* ElementTypeName(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return "uint16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING: return "string";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "double";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return "uint32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: return "uint64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    default: return "other";
  }
}

bool ToOrtType(DataType dt, ONNXTensorElementDataType* out) {
  switch (dt) {
    case DataType::kBool: *out = ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL; return true;
    case DataType::kUInt8: *out = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8; return true;
    case DataType::kUInt16: *out = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16; return true;
    case DataType::kUInt32: *out = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32; return true;
    case DataType::kUInt64: *out = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64; return true;
    case DataType::kInt8: *out = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8; return true;
    case DataType::kInt16: *out = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16; return true;
    case DataType::kInt32: *out = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32; return true;
    case DataType::kInt64: *out = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64; return true;
    case DataType::kFloat16: *out = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; return true;
    case DataType::kFloat32: *out = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; return true;
    case DataType::kFloat64: *out = ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE; return true;
  }
  return false;
}

bool FromOrtType(ONNXTensorElementDataType t, DataType* out) {
  for (DataType dt : {DataType::kBool, DataType::kUInt8, DataType::kUInt16, DataType::kUInt32, DataType::kUInt64,
                      DataType::kInt8, DataType::kInt16, DataType::kInt32, DataType::kInt64, DataType::kFloat16,
                      DataType::kFloat32, DataType::kFloat64}) {
    ONNXTensorElementDataType o;
    if (ToOrtType(dt, &o) && o == t) {
      *out = dt;
      return true;
    }
  }
  return false;
}

}  // namespace

// The session and the runtime it belongs to. `Check` turns an OrtStatus into a Status of `code`
// (and frees it): a batch that ONNX Runtime refuses is INTERNAL whatever ONNX Runtime's own code,
// as with the Python API, so fallbacks and breakers see a model failure, not the caller's.
struct OrtBackend::Session {
  const Runtime* rt = nullptr;
  OrtSession* session = nullptr;

  ~Session() {
    if (session != nullptr) rt->api->ReleaseSession(session);
  }

  Status Check(OrtStatus* st, StatusCode code, const std::string& what) const {
    if (st == nullptr) return Status::Ok();
    std::string msg = what + ": " + rt->api->GetErrorMessage(st);
    rt->api->ReleaseStatus(st);
    return Status(code, std::move(msg));
  }

  Status Describe(size_t index, bool input, OrtGraphArg* arg) const {
    const OrtApi* api = rt->api;
    OrtAllocator* alloc = nullptr;
    INFERLINE_RETURN_IF_ERROR(Check(api->GetAllocatorWithDefaultOptions(&alloc), StatusCode::kInternal, "allocator"));
    char* name = nullptr;
    OrtStatus* st = input ? api->SessionGetInputName(session, index, alloc, &name)
                          : api->SessionGetOutputName(session, index, alloc, &name);
    INFERLINE_RETURN_IF_ERROR(Check(st, StatusCode::kInternal, "graph argument name"));
    arg->name = name;
    INFERLINE_RETURN_IF_ERROR(Check(api->AllocatorFree(alloc, name), StatusCode::kInternal, "free"));
    OrtTypeInfo* info = nullptr;
    st = input ? api->SessionGetInputTypeInfo(session, index, &info) : api->SessionGetOutputTypeInfo(session, index, &info);
    INFERLINE_RETURN_IF_ERROR(Check(st, StatusCode::kInternal, "type of " + arg->name));
    std::unique_ptr<OrtTypeInfo, void (*)(OrtTypeInfo*)> hold(info, rt->api->ReleaseTypeInfo);
    ONNXType kind = ONNX_TYPE_UNKNOWN;
    INFERLINE_RETURN_IF_ERROR(Check(api->GetOnnxTypeFromTypeInfo(info, &kind), StatusCode::kInternal, "type"));
    const OrtTensorTypeAndShapeInfo* tensor = nullptr;
    if (kind == ONNX_TYPE_TENSOR) {
      INFERLINE_RETURN_IF_ERROR(Check(api->CastTypeInfoToTensorInfo(info, &tensor), StatusCode::kInternal, "tensor"));
    }
    if (tensor == nullptr) {
      arg->type = kind == ONNX_TYPE_SEQUENCE ? "sequence" : kind == ONNX_TYPE_MAP ? "map" : "non-tensor";
      return Status::Ok();
    }
    ONNXTensorElementDataType et;
    size_t rank = 0;
    INFERLINE_RETURN_IF_ERROR(Check(api->GetTensorElementType(tensor, &et), StatusCode::kInternal, "element type"));
    INFERLINE_RETURN_IF_ERROR(Check(api->GetDimensionsCount(tensor, &rank), StatusCode::kInternal, "rank"));
    arg->type = std::string("tensor(") + ElementTypeName(et) + ")";
    arg->has_shape = true;
    arg->dims.assign(rank, -1);
    std::vector<const char*> symbolic(rank, nullptr);
    INFERLINE_RETURN_IF_ERROR(Check(api->GetDimensions(tensor, arg->dims.data(), rank), StatusCode::kInternal, "dims"));
    INFERLINE_RETURN_IF_ERROR(
        Check(api->GetSymbolicDimensions(tensor, symbolic.data(), rank), StatusCode::kInternal, "symbolic dims"));
    for (size_t i = 0; i < rank; ++i) {
      arg->names.emplace_back(symbolic[i] != nullptr ? symbolic[i] : "");
      if (arg->dims[i] < 0) arg->dims[i] = -1;
    }
    return Status::Ok();
  }
};

uint32_t OrtApiVersion() noexcept { return ORT_API_VERSION; }

Status OrtLibraryVersion(const std::string& library, std::string* version) {
  const Runtime* rt = nullptr;
  INFERLINE_RETURN_IF_ERROR(LoadRuntime(library, &rt));
  *version = rt->version;
  return Status::Ok();
}

OrtBackend::OrtBackend(std::unique_ptr<Session> session) : session_(std::move(session)) {}
OrtBackend::~OrtBackend() = default;

Status OrtBackend::Open(const std::string& library, const std::string& model_path,
                        const OrtSessionOptionsSpec& options, std::vector<std::string> output_names,
                        std::shared_ptr<OrtBackend>* out) {
  auto s = std::make_unique<Session>();
  INFERLINE_RETURN_IF_ERROR(LoadRuntime(library, &s->rt));
  const OrtApi* api = s->rt->api;
  OrtSessionOptions* so = nullptr;
  INFERLINE_RETURN_IF_ERROR(s->Check(api->CreateSessionOptions(&so), StatusCode::kInternal, "session options"));
  std::unique_ptr<OrtSessionOptions, void (*)(OrtSessionOptions*)> hold(so, api->ReleaseSessionOptions);
  const StatusCode bad = StatusCode::kInvalidArgument;
  INFERLINE_RETURN_IF_ERROR(s->Check(api->SetIntraOpNumThreads(so, options.intra_op_threads), bad, "intra-op threads"));
  INFERLINE_RETURN_IF_ERROR(s->Check(api->SetInterOpNumThreads(so, options.inter_op_threads), bad, "inter-op threads"));
  if (options.parallel) {
    INFERLINE_RETURN_IF_ERROR(s->Check(api->SetSessionExecutionMode(so, ORT_PARALLEL), bad, "execution mode"));
  }
  GraphOptimizationLevel level = ORT_ENABLE_ALL;
  switch (options.graph_optimization) {
    case 0: level = ORT_DISABLE_ALL; break;
    case 1: level = ORT_ENABLE_BASIC; break;
    case 2: level = ORT_ENABLE_EXTENDED; break;
    case 99: level = ORT_ENABLE_ALL; break;
    default: return InvalidArgument("graph optimisation level must be 0, 1, 2 or 99, got " +
                                    std::to_string(options.graph_optimization));
  }
  INFERLINE_RETURN_IF_ERROR(s->Check(api->SetSessionGraphOptimizationLevel(so, level), bad, "graph optimisation level"));
  for (const auto& [key, value] : options.config_entries) {
    INFERLINE_RETURN_IF_ERROR(s->Check(api->AddSessionConfigEntry(so, key.c_str(), value.c_str()), bad,
                                "session config entry " + key + " = " + value));
  }
  INFERLINE_RETURN_IF_ERROR(s->Check(api->CreateSession(s->rt->env, model_path.c_str(), so, &s->session), bad,
                              "ONNX Runtime " + s->rt->version + " cannot load " + model_path));

  std::shared_ptr<OrtBackend> b(new OrtBackend(std::move(s)));
  size_t n_in = 0, n_out = 0;
  Session& sess = *b->session_;
  INFERLINE_RETURN_IF_ERROR(sess.Check(api->SessionGetInputCount(sess.session, &n_in), StatusCode::kInternal, "inputs"));
  INFERLINE_RETURN_IF_ERROR(sess.Check(api->SessionGetOutputCount(sess.session, &n_out), StatusCode::kInternal, "outputs"));
  b->graph_inputs_.resize(n_in);
  b->graph_outputs_.resize(n_out);
  for (size_t i = 0; i < n_in; ++i) INFERLINE_RETURN_IF_ERROR(sess.Describe(i, true, &b->graph_inputs_[i]));
  for (size_t i = 0; i < n_out; ++i) INFERLINE_RETURN_IF_ERROR(sess.Describe(i, false, &b->graph_outputs_[i]));
  b->output_names_ = std::move(output_names);
  for (const auto& name : b->output_names_) b->output_cnames_.push_back(name.c_str());
  b->library_version_ = sess.rt->version;
  *out = std::move(b);
  return Status::Ok();
}

Status OrtBackend::Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) {
  const Session& s = *session_;
  const OrtApi* api = s.rt->api;
  // Values over the batch's buffers; released on every path out.
  std::vector<OrtValue*> in_values(inputs.size(), nullptr);
  std::vector<OrtValue*> out_values(output_cnames_.size(), nullptr);
  struct Release {
    const OrtApi* api;
    std::vector<OrtValue*>* values;
    ~Release() {
      for (OrtValue* v : *values) {
        if (v != nullptr) api->ReleaseValue(v);
      }
    }
  } release_in{api, &in_values}, release_out{api, &out_values};
  std::vector<const char*> in_names(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i].tensor;
    ONNXTensorElementDataType et;
    if (!ToOrtType(t.dtype, &et)) return Internal("input " + inputs[i].name + ": unsupported data type");
    in_names[i] = inputs[i].name.c_str();
    // ONNX Runtime takes a non-const pointer but only reads inputs.
    INFERLINE_RETURN_IF_ERROR(s.Check(api->CreateTensorWithDataAsOrtValue(s.rt->cpu, t.data, t.ByteSize(), t.shape.dims,
                                                                   static_cast<size_t>(t.shape.rank), et,
                                                                   &in_values[i]),
                               StatusCode::kInternal, "input " + inputs[i].name));
  }
  INFERLINE_RETURN_IF_ERROR(s.Check(api->Run(s.session, nullptr, in_names.data(), in_values.data(), in_values.size(),
                                      output_cnames_.data(), output_cnames_.size(), out_values.data()),
                             StatusCode::kInternal, "ONNX Runtime run"));
  outputs->reserve(out_values.size());
  for (size_t k = 0; k < out_values.size(); ++k) {
    OrtValue* v = out_values[k];
    OrtTensorTypeAndShapeInfo* info = nullptr;
    INFERLINE_RETURN_IF_ERROR(s.Check(api->GetTensorTypeAndShape(v, &info), StatusCode::kInternal, "output shape"));
    std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> hold(
        info, api->ReleaseTensorTypeAndShapeInfo);
    ONNXTensorElementDataType et;
    size_t rank = 0;
    INFERLINE_RETURN_IF_ERROR(s.Check(api->GetTensorElementType(info, &et), StatusCode::kInternal, "output type"));
    INFERLINE_RETURN_IF_ERROR(s.Check(api->GetDimensionsCount(info, &rank), StatusCode::kInternal, "output rank"));
    Tensor t;
    if (!FromOrtType(et, &t.dtype)) {
      return Internal("output " + output_names_[k] + " is " + ElementTypeName(et) + ", which inferline cannot serve");
    }
    if (rank > static_cast<size_t>(Shape::kMaxRank)) {
      return Internal("output " + output_names_[k] + " has rank " + std::to_string(rank));
    }
    t.shape.rank = static_cast<int32_t>(rank);
    INFERLINE_RETURN_IF_ERROR(s.Check(api->GetDimensions(info, t.shape.dims, rank), StatusCode::kInternal, "output dims"));
    INFERLINE_RETURN_IF_ERROR(s.Check(api->GetTensorMutableData(v, &t.data), StatusCode::kInternal, "output data"));
    void (*release)(OrtValue*) = api->ReleaseValue;
    t.owner = std::shared_ptr<void>(v, [release](void* p) { release(static_cast<OrtValue*>(p)); });
    out_values[k] = nullptr;  // owned by the tensor now
    outputs->push_back(NamedTensor{output_names_[k], std::move(t)});
  }
  return Status::Ok();
}

}  // namespace inferline
