#include "inferline/backend.h"

#include <cstring>

namespace inferline {

Status EchoBackend::Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) {
  if (inputs.size() < output_names_.size()) {
    return Internal("echo backend: " + std::to_string(output_names_.size()) + " outputs need as many inputs, got " +
                    std::to_string(inputs.size()));
  }
  outputs->reserve(output_names_.size());
  for (size_t i = 0; i < output_names_.size(); ++i) {
    const Tensor& in = inputs[i].tensor;
    Tensor out = Tensor::Allocate(in.dtype, in.shape);
    std::memcpy(out.data, in.data, in.ByteSize());
    outputs->push_back(NamedTensor{output_names_[i], std::move(out)});
  }
  return Status::Ok();
}

}  // namespace inferline
