// dense_mlp.h — a real C++ backend for the example host: the demo dense MLP (`dense-demo`, untrained),
//   logits = relu(x @ w1) @ w2,  label = argmax(logits)
// float32 throughout, in the same arithmetic order as inferline.demo's NumPy
// backend so the answers match it bit for bit:
//   - dense layer, per output j: acc = x[0]*w[0][j]; acc = acc + x[i]*w[i][j]
//     for i = 1..n-1 (every multiply and add rounded to float on its own; this
//     file must be compiled with -ffp-contract=off and without fast-math);
//   - relu(v) = v > 0 ? v : +0 (NumPy: np.where(v > 0, v, 0));
//   - argmax: the first maximum, or the first NaN (np.argmax).
// Rows are computed independently, so a row's answer does not depend on its batch.
// Run is thread-safe (read-only weights, per-call scratch): any `instances` works.
#pragma once

#include <cstdint>
#include <vector>

#include "inferline/backend.h"

class DenseMlpBackend final : public inferline::Backend {
 public:
  // w1: [features][hidden], w2: [hidden][classes], row-major.
  DenseMlpBackend(std::vector<float> w1, std::vector<float> w2, int64_t features, int64_t hidden,
                  int64_t classes);

  // inputs[0]: float32 [rows, features] (after preprocessing). Outputs
  // "logits" float32 [rows, classes] and "label" int64 [rows, 1].
  inferline::Status Run(const std::vector<inferline::NamedTensor>& inputs,
                        std::vector<inferline::NamedTensor>* outputs) override;

 private:
  const std::vector<float> w1_, w2_;
  const int64_t features_, hidden_, classes_;
};
