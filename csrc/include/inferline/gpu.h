// inferline/gpu.h — what the process can do with CUDA devices, for the GPU placement of models
// (ModelConfig::gpu). Safe to call in any build: without CUDA every query says so.
#pragma once

#include <cstdint>
#include <string>

#include "inferline/status.h"

namespace inferline {

struct GpuAvailability {
  bool built = false;  // compiled with CUDA (INFERLINE_HAVE_CUDA)
  int devices = 0;     // visible CUDA devices
  std::string reason;  // empty when devices > 0; else what is missing, for error messages
};

// Queries the CUDA runtime once per call (cheap after the first).
GpuAvailability QueryGpus();

// Free and total memory of `device` (cudaMemGetInfo). FAILED_PRECONDITION with QueryGpus's
// reason where there is no such device.
Status GpuMemoryInfo(int device, uint64_t* free_bytes, uint64_t* total_bytes);

}  // namespace inferline
