// inferline/backend.h — what executes a batch: the interface a model runtime implements.
//
// A backend is called once per batch with the backend-facing inputs (after
// preprocessing), each with dim 0 = the batch's rows, in the model config's
// input order and named. It fills `outputs` with one tensor per declared output
// (matched by name; extra outputs are ignored), dim 0 = rows, declared dtype.
// Output tensors must own their memory (Tensor::owner; an output without an owner
// is refused with INTERNAL): the engine hands slices
// of them to the callers, and they may outlive the batch.
//
// Thread-safety: Run is called concurrently from up to `instances` executor
// threads of the model. A backend that cannot run concurrently should lock, or
// the model should use instances = 1. Run must not throw; an exception that
// escapes anyway is turned into INTERNAL for the batch.
//
// Row independence: the engine relies on a row's result not depending on the
// other rows of the batch (it re-runs sub-batches to isolate failing rows, and
// promises callers batch-invariant results). A backend that cannot promise
// bitwise batch invariance should say so in its model's metadata.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "inferline/status.h"
#include "inferline/tensor.h"

namespace inferline {

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

class Backend {
 public:
  virtual ~Backend() = default;
  // inputs: read-only for the backend. outputs: empty on entry.
  virtual Status Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) = 0;
};

// One buffer in a CUDA device's memory, handed to a DeviceBackend. `shape.dims[0]` is the
// batch's rows; `capacity_rows` (>= rows) is how many rows fit from `data` to the end of the
// buffer (work that pads a batch to a larger size may write that far).
struct DeviceTensor {
  std::string name;
  void* data = nullptr;
  DataType dtype = DataType::kFloat32;
  Shape shape;
  int64_t capacity_rows = 0;
};

// A backend that runs on CUDA device `device()`, fed device memory by the core. Only a model
// placed on that device (ModelConfig::gpu) takes it, and such a model takes no other. The core
// gathers the batch's rows into pinned host memory, copies them to the device on the executor's
// own stream and runs the fused preprocessing there (kernels/), then calls RunOnDevice with
//   inputs:  the backend-facing inputs, device memory, dim 0 = rows, config order;
//   outputs: one per declared output, device memory the core owns, dim 0 = rows, declared
//            dtype and dims; the backend writes every element of the `rows` rows;
//   stream:  the executor's cudaStream_t.
// The backend may return before its work is done, as long as that work is ordered on `stream`:
// the core enqueues the copy back to the host on the same stream and then synchronises it. The
// buffers stay the same for the model's lifetime per executor (one set per instance), so their
// addresses may be captured (CUDA graphs); a failing batch is bisected with views that start
// inside them. Same threading rules as Run; an error fails the rows it was called for.
class DeviceBackend : public Backend {
 public:
  explicit DeviceBackend(int device) : device_(device) {}
  int device() const noexcept { return device_; }
  // Host tensors: refused (FAILED_PRECONDITION); the core calls RunOnDevice instead.
  Status Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) override;
  virtual Status RunOnDevice(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs,
                             void* stream) = 0;

 private:
  int device_;
};

// Returns each input as the output of the same position, renamed: output i is a
// copy of input i. For tests and for measuring the engine's own overhead.
class EchoBackend final : public Backend {
 public:
  explicit EchoBackend(std::vector<std::string> output_names) : output_names_(std::move(output_names)) {}
  Status Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) override;

 private:
  std::vector<std::string> output_names_;
};

}  // namespace inferline
