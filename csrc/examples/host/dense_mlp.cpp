#include "dense_mlp.h"

#include <cmath>
#include <string>
#include <utility>

namespace {

using inferline::DataType;
using inferline::Shape;
using inferline::Status;
using inferline::Tensor;

// out[j] = sum over i of x[i] * w[i][j], accumulated in order i = 0, 1, ..., n-1.
// The loop over j vectorises; the order over i (the sum) is kept.
void DenseSequential(const float* x, const float* w, int64_t n, int64_t m, float* out) {
  for (int64_t j = 0; j < m; ++j) out[j] = x[0] * w[j];
  for (int64_t i = 1; i < n; ++i) {
    const float xi = x[i];
    const float* wi = w + i * m;
    for (int64_t j = 0; j < m; ++j) out[j] = out[j] + xi * wi[j];
  }
}

void Relu(float* v, int64_t n) {
  for (int64_t j = 0; j < n; ++j) v[j] = v[j] > 0.0f ? v[j] : 0.0f;
}

// np.argmax over floats: the first maximum; a NaN wins at once.
int64_t ArgMax(const float* v, int64_t n) {
  float best = v[0];
  int64_t at = 0;
  if (std::isnan(best)) return 0;
  for (int64_t j = 1; j < n; ++j) {
    if (!(v[j] <= best)) {
      best = v[j];
      at = j;
      if (std::isnan(best)) break;
    }
  }
  return at;
}

}  // namespace

DenseMlpBackend::DenseMlpBackend(std::vector<float> w1, std::vector<float> w2, int64_t features, int64_t hidden,
                                 int64_t classes)
    : w1_(std::move(w1)), w2_(std::move(w2)), features_(features), hidden_(hidden), classes_(classes) {}

Status DenseMlpBackend::Run(const std::vector<inferline::NamedTensor>& inputs,
                            std::vector<inferline::NamedTensor>* outputs) {
  if (inputs.size() != 1) return inferline::InvalidArgument("dense MLP: expected one input");
  const Tensor& x = inputs[0].tensor;
  if (x.dtype != DataType::kFloat32 || x.shape.rank != 2 || x.shape[1] != features_) {
    return inferline::InvalidArgument("dense MLP: input '" + inputs[0].name + "' must be FP32 [rows, " +
                                      std::to_string(features_) + "], got " + DataTypeName(x.dtype) + " " +
                                      x.shape.ToString());
  }
  const int64_t rows = x.shape[0];
  Tensor logits = Tensor::Allocate(DataType::kFloat32, Shape{rows, classes_});
  Tensor label = Tensor::Allocate(DataType::kInt64, Shape{rows, 1});
  std::vector<float> h(static_cast<size_t>(hidden_));
  const auto* in = static_cast<const float*>(x.data);
  auto* out = static_cast<float*>(logits.data);
  auto* lab = static_cast<int64_t*>(label.data);
  for (int64_t r = 0; r < rows; ++r) {
    DenseSequential(in + r * features_, w1_.data(), features_, hidden_, h.data());
    Relu(h.data(), hidden_);
    DenseSequential(h.data(), w2_.data(), hidden_, classes_, out + r * classes_);
    lab[r] = ArgMax(out + r * classes_, classes_);
  }
  outputs->push_back({"logits", std::move(logits)});
  outputs->push_back({"label", std::move(label)});
  return Status::Ok();
}
