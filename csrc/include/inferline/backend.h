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
