// Private: one executor's CUDA resources for a model placed on a GPU (ModelConfig::gpu).
//
// A lane owns a stream and, for max_batch_size rows, pinned host staging and device buffers:
//   per input   pinned request-facing rows -> device request-facing rows -> (preprocessing
//               kernel) -> device backend-facing rows (the same buffer when there is none)
//   per output  device rows (the backend writes them) -> pinned rows -> the callers' tensors
// A batch goes Stage (gather into pinned, copy in, preprocess: all enqueued) -> Run (the
// backend enqueues its work) -> Fetch (copy out, synchronise, copy into owned host tensors).
// Every buffer is allocated by Create; only a request-facing image input whose height/width are
// free can outgrow its buffers, which are then reallocated (doubling) between batches.
//
// Thread-safety: a lane belongs to one executor thread; nothing is shared between lanes except
// the device. Without CUDA (no INFERLINE_HAVE_CUDA) Create refuses with the reason.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "inferline/backend.h"
#include "inferline/model.h"

namespace inferline {

struct Request;

class GpuLane {
 public:
  static Expected<std::unique_ptr<GpuLane>> Create(const ModelConfig& config,
                                                  const std::vector<TensorSpec>& backend_inputs,
                                                  const std::string& context);
  ~GpuLane();
  GpuLane(const GpuLane&) = delete;
  GpuLane& operator=(const GpuLane&) = delete;

  // Gathers the rows of requests[0, count) (`rows` in all) and enqueues the copy to the device
  // and the preprocessing.
  Status Stage(Request* const* requests, size_t count, uint32_t rows);
  // Calls the backend on rows [begin, begin + rows) of the staged batch.
  Status Run(DeviceBackend& backend, uint32_t begin, uint32_t rows);
  // Copies rows [begin, begin + rows) of every output back, waits for the stream, and returns
  // host tensors that own their memory (declared order).
  Status Fetch(uint32_t begin, uint32_t rows, std::vector<Tensor>* outputs);
  // Waits for the stream and clears a non-sticky CUDA error, after a failed step.
  void Recover();

  GpuMemory memory() const noexcept;

  struct State;

 private:
  explicit GpuLane(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

// Checks what a GPU placement needs that the config alone can tell (the output dims), and that
// the backend matches the placement. Used by Model::Create before any lane is made.
Status CheckGpuPlacement(const ModelConfig& config, const Backend* backend);

}  // namespace inferline
