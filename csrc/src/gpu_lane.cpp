// GPU lanes (gpu_lane.h), the CUDA queries (inferline/gpu.h) and DeviceBackend's host refusal.
// Built with the CUDA runtime where the kernels library exists (INFERLINE_HAVE_CUDA), else as
// refusals that say what is missing.
#include "gpu_lane.h"

#include <atomic>
#include <cstring>

#include "inferline/gpu.h"
#include "model_impl.h"

#if INFERLINE_HAVE_CUDA
#include <cuda_runtime.h>

#include "cuda_util.h"
#include "inferline/kernels/preprocess_cuda.h"
#endif

namespace inferline {

namespace {

Status FailedPrecondition(std::string msg) { return Status(StatusCode::kFailedPrecondition, std::move(msg)); }

std::string Placement(const ModelConfig& c) {
  return c.Describe() + ": placed on CUDA device " + std::to_string(c.gpu.device);
}

}  // namespace

Status DeviceBackend::Run(const std::vector<NamedTensor>&, std::vector<NamedTensor>*) {
  return FailedPrecondition("a device backend runs only in a model placed on its GPU (ModelConfig::gpu)");
}

Status CheckGpuPlacement(const ModelConfig& c, const Backend* backend) {
  const auto* device_backend = dynamic_cast<const DeviceBackend*>(backend);
  if (!c.gpu.enabled()) {
    if (device_backend == nullptr) return Status::Ok();
    return InvalidArgument(c.Describe() + ": its backend runs on CUDA device " +
                           std::to_string(device_backend->device()) +
                           " but the model is placed on the host (set gpu.device)");
  }
  if (device_backend == nullptr) {
    return InvalidArgument(Placement(c) + " but its backend runs on the host; a GPU model needs a device backend");
  }
  if (device_backend->device() != c.gpu.device) {
    return InvalidArgument(Placement(c) + " but its backend runs on device " +
                           std::to_string(device_backend->device()));
  }
  for (const TensorSpec& out : c.outputs) {
    for (int d = 1; d < out.shape.rank; ++d) {
      if (out.shape.dims[d] < 1) {
        return InvalidArgument(Placement(c) + ": output '" + out.name + "' has shape " + out.shape.ToString() +
                               "; on a GPU every dim past dim 0 must be fixed (output buffers are allocated once)");
      }
    }
  }
  const GpuAvailability gpus = QueryGpus();
  if (gpus.devices == 0) return FailedPrecondition(Placement(c) + ", but " + gpus.reason);
  if (c.gpu.device >= gpus.devices) {
    return FailedPrecondition(Placement(c) + ", but this process sees " + std::to_string(gpus.devices) +
                              " CUDA device(s)");
  }
  return Status::Ok();
}

GpuLane::GpuLane(std::unique_ptr<State> state) : s_(std::move(state)) {}

#if INFERLINE_HAVE_CUDA

#define LANE_CHECK INFERLINE_CUDA_CHECK

GpuAvailability QueryGpus() {
  GpuAvailability a;
  a.built = true;
  const cudaError_t err = cudaGetDeviceCount(&a.devices);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    a.devices = 0;
    a.reason = std::string("no CUDA device is usable (cudaGetDeviceCount: ") + cudaGetErrorName(err) + ": " +
               cudaGetErrorString(err) + ")";
    if (err == cudaErrorInsufficientDriver) {
      a.reason += "; no NVIDIA driver is loaded, or it is older than the CUDA runtime " +
                  std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10) +
                  " inferline was built with";
    }
  } else if (a.devices == 0) {
    a.reason = "no CUDA device is visible";
  }
  return a;
}

Status GpuMemoryInfo(int device, uint64_t* free_bytes, uint64_t* total_bytes) {
  const GpuAvailability a = QueryGpus();
  if (device < 0 || device >= a.devices) {
    return FailedPrecondition("CUDA device " + std::to_string(device) + ": " +
                              (a.devices == 0 ? a.reason : std::to_string(a.devices) + " device(s) visible"));
  }
  LANE_CHECK(cudaSetDevice(device));
  size_t free_b = 0, total_b = 0;
  LANE_CHECK(cudaMemGetInfo(&free_b, &total_b));
  *free_bytes = free_b;
  *total_bytes = total_b;
  return Status::Ok();
}

namespace {

// Initial per-image room of a request-facing image input whose height/width are free.
constexpr int64_t kInitialImageSide = 64;

struct InputLane {
  PreprocessSpec pre;
  std::string name;
  DataType backend_dtype = DataType::kFloat32;
  Shape backend_shape;
  size_t backend_row_bytes = 0;
  bool variable = false;       // request-facing row size varies (image input with free H/W)
  void* pinned = nullptr;      // request-facing rows, host
  void* staged = nullptr;      // request-facing rows, device
  size_t capacity = 0;         // bytes of `pinned` and of `staged`
  void* backend = nullptr;     // backend-facing rows, device (== staged without preprocessing)
  void* workspace = nullptr;   // the kernel's tables
  kernels::TabularPlan tabular;
  kernels::ImagePlan image;
  kernels::ImageDesc* descs = nullptr;  // pinned, max_rows entries
};

struct OutputLane {
  std::string name;
  DataType dtype = DataType::kFloat32;
  Shape shape;
  size_t row_bytes = 0;
  void* device = nullptr;
  void* pinned = nullptr;
};

}  // namespace

struct GpuLane::State {
  int device = 0;
  cudaStream_t stream = nullptr;
  uint32_t max_rows = 0;
  std::string context;
  std::vector<InputLane> in;
  std::vector<OutputLane> out;
  // Written by the lane's executor (a free-size image input may grow), read by gpu_memory().
  std::atomic<uint64_t> device_bytes{0}, pinned_bytes{0};

  Status DeviceAlloc(size_t bytes, void** p) {
    LANE_CHECK(cudaMalloc(p, bytes == 0 ? 1 : bytes));
    device_bytes += bytes;
    return Status::Ok();
  }
  Status PinnedAlloc(size_t bytes, void** p) {
    LANE_CHECK(cudaHostAlloc(p, bytes == 0 ? 1 : bytes, cudaHostAllocDefault));
    pinned_bytes += bytes;
    return Status::Ok();
  }
  // Frees the request-facing staging of `x` (between batches: the stream is idle).
  void FreeStaging(InputLane& x) {
    if (x.pinned != nullptr) (void)cudaFreeHost(x.pinned);
    if (x.staged != nullptr) (void)cudaFree(x.staged);
    if (x.backend == x.staged) x.backend = nullptr;
    pinned_bytes -= x.capacity;
    device_bytes -= x.capacity;
    x.pinned = x.staged = nullptr;
    x.capacity = 0;
  }
  Status AllocStaging(InputLane& x, size_t bytes) {
    void* pinned = nullptr;
    INFERLINE_RETURN_IF_ERROR(PinnedAlloc(bytes, &pinned));
    Status st = DeviceAlloc(bytes, &x.staged);
    if (!st.ok()) {
      (void)cudaFreeHost(pinned);
      pinned_bytes -= bytes;
      return st;
    }
    x.pinned = pinned;
    x.capacity = bytes;
    if (x.pre.kind == PreprocessSpec::Kind::kNone) x.backend = x.staged;
    return Status::Ok();
  }

  ~State() {
    (void)cudaSetDevice(device);
    if (stream != nullptr) (void)cudaStreamSynchronize(stream);
    for (InputLane& x : in) {
      FreeStaging(x);
      if (x.pre.kind != PreprocessSpec::Kind::kNone && x.backend != nullptr) (void)cudaFree(x.backend);
      if (x.workspace != nullptr) (void)cudaFree(x.workspace);
      if (x.descs != nullptr) (void)cudaFreeHost(x.descs);
    }
    for (OutputLane& o : out) {
      if (o.device != nullptr) (void)cudaFree(o.device);
      if (o.pinned != nullptr) (void)cudaFreeHost(o.pinned);
    }
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
    (void)cudaGetLastError();
  }
};

namespace {

Status MakeInput(GpuLane::State& s, const TensorSpec& spec, const PreprocessSpec& pre, const TensorSpec& backend,
                 InputLane* x) {
  x->pre = pre;
  x->name = backend.name;
  x->backend_dtype = backend.dtype;
  x->backend_shape = backend.shape;
  x->backend_row_bytes = static_cast<size_t>(backend.shape.RowElements()) * DataTypeSize(backend.dtype);
  int64_t row_elements = 1;
  for (int d = 1; d < spec.shape.rank; ++d) {
    int64_t dim = spec.shape.dims[d];
    if (dim < 1) {
      x->variable = true;
      dim = kInitialImageSide;
    }
    row_elements *= dim;
  }
  const size_t staging = static_cast<size_t>(row_elements) * DataTypeSize(spec.dtype) * s.max_rows;
  INFERLINE_RETURN_IF_ERROR(s.AllocStaging(*x, staging));
  switch (pre.kind) {
    case PreprocessSpec::Kind::kNone:
      break;
    case PreprocessSpec::Kind::kTabular: {
      const int64_t features = spec.shape.RowElements();
      const size_t ws = kernels::TabularWorkspaceBytes(features);
      INFERLINE_RETURN_IF_ERROR(s.DeviceAlloc(ws, &x->workspace));
      auto plan = kernels::PrepareTabular(pre.tabular, features, x->workspace, ws, s.stream);
      if (!plan.ok()) return plan.status();
      x->tabular = plan.value();
      INFERLINE_RETURN_IF_ERROR(s.DeviceAlloc(x->backend_row_bytes * s.max_rows, &x->backend));
      break;
    }
    case PreprocessSpec::Kind::kImage: {
      const int64_t channels = spec.shape.dims[3];
      const size_t ws = kernels::ImageWorkspaceBytes(channels, s.max_rows);
      INFERLINE_RETURN_IF_ERROR(s.DeviceAlloc(ws, &x->workspace));
      auto plan = kernels::PrepareImage(pre.image, channels, s.max_rows, x->workspace, ws, s.stream);
      if (!plan.ok()) return plan.status();
      x->image = plan.value();
      INFERLINE_RETURN_IF_ERROR(
          s.PinnedAlloc(sizeof(kernels::ImageDesc) * s.max_rows, reinterpret_cast<void**>(&x->descs)));
      INFERLINE_RETURN_IF_ERROR(s.DeviceAlloc(x->backend_row_bytes * s.max_rows, &x->backend));
      break;
    }
  }
  return Status::Ok();
}

}  // namespace

Expected<std::unique_ptr<GpuLane>> GpuLane::Create(const ModelConfig& config,
                                                   const std::vector<TensorSpec>& backend_inputs,
                                                   const std::string& context) {
  auto s = std::make_unique<State>();
  s->device = config.gpu.device;
  s->max_rows = config.batching.max_batch_size;
  s->context = context;
  LANE_CHECK(cudaSetDevice(s->device));
  int least = 0, greatest = 0;
  LANE_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  LANE_CHECK(cudaStreamCreateWithPriority(&s->stream, cudaStreamNonBlocking,
                                          config.gpu.high_priority ? greatest : least));
  s->in.resize(config.inputs.size());
  for (size_t i = 0; i < config.inputs.size(); ++i) {
    INFERLINE_RETURN_IF_ERROR(
        MakeInput(*s, config.inputs[i], config.preprocessing[i], backend_inputs[i], &s->in[i]));
  }
  s->out.resize(config.outputs.size());
  for (size_t k = 0; k < config.outputs.size(); ++k) {
    OutputLane& o = s->out[k];
    o.name = config.outputs[k].name;
    o.dtype = config.outputs[k].dtype;
    o.shape = config.outputs[k].shape;
    o.row_bytes = static_cast<size_t>(o.shape.RowElements()) * DataTypeSize(o.dtype);
    INFERLINE_RETURN_IF_ERROR(s->DeviceAlloc(o.row_bytes * s->max_rows, &o.device));
    INFERLINE_RETURN_IF_ERROR(s->PinnedAlloc(o.row_bytes * s->max_rows, &o.pinned));
  }
  LANE_CHECK(cudaStreamSynchronize(s->stream));
  return std::unique_ptr<GpuLane>(new GpuLane(std::move(s)));
}

GpuLane::~GpuLane() = default;

Status GpuLane::Stage(Request* const* requests, size_t count, uint32_t rows) {
  State& s = *s_;
  LANE_CHECK(cudaSetDevice(s.device));
  for (size_t i = 0; i < s.in.size(); ++i) {
    InputLane& x = s.in[i];
    size_t total = 0;
    for (size_t r = 0; r < count; ++r) total += requests[r]->req.inputs[i].ByteSize();
    if (total > x.capacity) {  // only a free-size image input gets here
      size_t grown = x.capacity;
      while (grown < total) grown *= 2;
      s.FreeStaging(x);
      INFERLINE_RETURN_IF_ERROR(s.AllocStaging(x, grown));
    }
    char* dst = static_cast<char*>(x.pinned);
    size_t offset = 0;
    uint32_t image = 0;
    for (size_t r = 0; r < count; ++r) {
      const TensorView& v = requests[r]->req.inputs[i];
      const size_t bytes = v.ByteSize();
      std::memcpy(dst + offset, v.data, bytes);
      if (x.pre.kind == PreprocessSpec::Kind::kImage) {
        const size_t row_bytes = v.RowBytes();
        for (int64_t k = 0; k < v.shape.dims[0]; ++k) {
          x.descs[image++] = kernels::ImageDesc{static_cast<int64_t>(offset + k * row_bytes),
                                                static_cast<int32_t>(v.shape.dims[1]),
                                                static_cast<int32_t>(v.shape.dims[2])};
        }
      }
      offset += bytes;
    }
    LANE_CHECK(cudaMemcpyAsync(x.staged, x.pinned, total, cudaMemcpyHostToDevice, s.stream));
    if (x.pre.kind == PreprocessSpec::Kind::kTabular) {
      INFERLINE_RETURN_IF_ERROR(kernels::RunTabular(x.tabular, static_cast<const float*>(x.staged), rows,
                                                    x.backend, DataType::kFloat32, s.stream));
    } else if (x.pre.kind == PreprocessSpec::Kind::kImage) {
      INFERLINE_RETURN_IF_ERROR(kernels::RunImage(x.image, static_cast<const uint8_t*>(x.staged), total, x.descs,
                                                  rows, x.backend, DataType::kFloat32, s.stream));
    }
  }
  return Status::Ok();
}

Status GpuLane::Run(DeviceBackend& backend, uint32_t begin, uint32_t rows) {
  State& s = *s_;
  LANE_CHECK(cudaSetDevice(s.device));
  std::vector<DeviceTensor> inputs(s.in.size()), outputs(s.out.size());
  const int64_t capacity = static_cast<int64_t>(s.max_rows) - begin;
  for (size_t i = 0; i < s.in.size(); ++i) {
    const InputLane& x = s.in[i];
    DeviceTensor& t = inputs[i];
    t.name = x.name;
    t.data = static_cast<char*>(x.backend) + x.backend_row_bytes * begin;
    t.dtype = x.backend_dtype;
    t.shape = x.backend_shape;
    t.shape.dims[0] = rows;
    t.capacity_rows = capacity;
  }
  for (size_t k = 0; k < s.out.size(); ++k) {
    const OutputLane& o = s.out[k];
    DeviceTensor& t = outputs[k];
    t.name = o.name;
    t.data = static_cast<char*>(o.device) + o.row_bytes * begin;
    t.dtype = o.dtype;
    t.shape = o.shape;
    t.shape.dims[0] = rows;
    t.capacity_rows = capacity;
  }
  return backend.RunOnDevice(inputs, outputs, s.stream);
}

Status GpuLane::Fetch(uint32_t begin, uint32_t rows, std::vector<Tensor>* outputs) {
  State& s = *s_;
  LANE_CHECK(cudaSetDevice(s.device));
  for (const OutputLane& o : s.out) {
    const size_t at = o.row_bytes * begin;
    LANE_CHECK(cudaMemcpyAsync(static_cast<char*>(o.pinned) + at, static_cast<const char*>(o.device) + at,
                               o.row_bytes * rows, cudaMemcpyDeviceToHost, s.stream));
  }
  LANE_CHECK(cudaStreamSynchronize(s.stream));
  outputs->clear();
  for (const OutputLane& o : s.out) {
    Shape shape = o.shape;
    shape.dims[0] = rows;
    Tensor t = Tensor::Allocate(o.dtype, shape);
    std::memcpy(t.data, static_cast<const char*>(o.pinned) + o.row_bytes * begin, o.row_bytes * rows);
    outputs->push_back(std::move(t));
  }
  return Status::Ok();
}

void GpuLane::Recover() {
  (void)cudaSetDevice(s_->device);
  (void)cudaStreamSynchronize(s_->stream);
  (void)cudaGetLastError();
}

GpuMemory GpuLane::memory() const noexcept {
  return GpuMemory{s_->device, s_->device_bytes.load(std::memory_order_relaxed),
                   s_->pinned_bytes.load(std::memory_order_relaxed)};
}

#else  // no CUDA in this build

namespace {
constexpr const char* kNoCuda =
    "inferline was built without CUDA (nvcc was not found when it was compiled; reinstall where nvcc is on "
    "PATH)";
}

GpuAvailability QueryGpus() { return GpuAvailability{false, 0, kNoCuda}; }

Status GpuMemoryInfo(int device, uint64_t*, uint64_t*) {
  return FailedPrecondition("CUDA device " + std::to_string(device) + ": " + kNoCuda);
}

struct GpuLane::State {
  int device = -1;
};

Expected<std::unique_ptr<GpuLane>> GpuLane::Create(const ModelConfig& config, const std::vector<TensorSpec>&,
                                                   const std::string&) {
  return FailedPrecondition(Placement(config) + ", but " + kNoCuda);
}

GpuLane::~GpuLane() = default;
Status GpuLane::Stage(Request* const*, size_t, uint32_t) { return Internal(kNoCuda); }
Status GpuLane::Run(DeviceBackend&, uint32_t, uint32_t) { return Internal(kNoCuda); }
Status GpuLane::Fetch(uint32_t, uint32_t, std::vector<Tensor>*) { return Internal(kNoCuda); }
void GpuLane::Recover() {}
GpuMemory GpuLane::memory() const noexcept { return GpuMemory{}; }

#endif

}  // namespace inferline
