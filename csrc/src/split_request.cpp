// Requests with more rows than max_batch_size: split into parts of at most
// max_batch_size rows, each queued as its own request, and reassembled here.
// The SplitRequest is the parts' completion sink; the last part to be answered
// delivers the whole answer to the caller's sink and deletes the SplitRequest.
#include <algorithm>
#include <cstring>

#include "model_impl.h"

namespace inferline {

class SplitRequest final : public CompletionSink {
 public:
  SplitRequest(Model::Impl& model, const InferRequest& request, uint32_t rows, size_t parts)
      : model_(model), tag_(request.tag), sink_(request.sink), rows_(rows),
        enqueue_us_(model.clock_->NowUs()), remaining_(parts) {}

  void Deliver(InferResult* results, size_t count) noexcept override {
    InferResult final_result;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < count; ++i) Merge(results[i]);
      remaining_ -= count;
      if (remaining_ > 0) return;
      final_result.tag = tag_;
      final_result.answered_model = model_.config_.name;
      final_result.answered_version = model_.config_.version;
      final_result.status = status_;
      final_result.queue_us = queue_us_;
      final_result.compute_us = compute_us_;
      if (status_.ok()) final_result.outputs = std::move(outputs_);
    }
    uint64_t now = model_.clock_->NowUs();
    RecordOutcome(model_.stats_, final_result.status, final_result.queue_us, now - enqueue_us_);
    sink_->Deliver(&final_result, 1);
    delete this;
  }

 private:
  // requires mu_. A part's tag is its first row in the whole request.
  void Merge(InferResult& part) {
    queue_us_ = std::max(queue_us_, part.queue_us);
    compute_us_ += part.compute_us;
    if (!status_.ok()) return;
    if (!part.status.ok()) {
      status_ = part.status;
      return;
    }
    if (outputs_.empty()) {
      for (const Tensor& t : part.outputs) {
        Shape shape = t.shape;
        shape.dims[0] = rows_;
        outputs_.push_back(Tensor::Allocate(t.dtype, shape));
      }
    }
    for (size_t k = 0; k < outputs_.size(); ++k) {
      const Tensor& src = part.outputs[k];
      Tensor& dst = outputs_[k];
      bool same_row = src.dtype == dst.dtype && src.shape.rank == dst.shape.rank;
      for (int d = 1; same_row && d < src.shape.rank; ++d) same_row = src.shape.dims[d] == dst.shape.dims[d];
      if (!same_row || part.tag + src.shape.dims[0] > rows_) {
        status_ = Internal(model_.context_ + ": parts of a split request returned outputs of different shapes");
        return;
      }
      std::memcpy(static_cast<char*>(dst.data) + part.tag * dst.RowBytes(), src.data, src.ByteSize());
    }
  }

  Model::Impl& model_;
  const uint64_t tag_;
  CompletionSink* const sink_;
  const uint32_t rows_;
  const uint64_t enqueue_us_;
  std::mutex mu_;
  size_t remaining_;             // requires mu_
  Status status_;                // requires mu_: first error of any part
  std::vector<Tensor> outputs_;  // requires mu_
  uint64_t queue_us_ = 0, compute_us_ = 0;
};

std::vector<Request*> Model::Impl::MakeParts(const InferRequest& request, uint32_t rows) {
  const uint32_t part_rows = config_.batching.max_batch_size;
  const size_t parts = (size_t{rows} + part_rows - 1) / part_rows;
  std::vector<Request*> out;
  out.reserve(parts);
  auto* split = new SplitRequest(*this, request, rows, parts);
  for (uint32_t begin = 0; begin < rows; begin += std::min(part_rows, rows - begin)) {
    auto* r = new Request{request, std::min(part_rows, rows - begin), 0, true};
    r->req.tag = begin;
    r->req.sink = split;
    for (TensorView& v : r->req.inputs) {
      v.data = static_cast<const char*>(v.data) + size_t{begin} * v.RowBytes();
      v.shape.dims[0] = r->rows;
    }
    out.push_back(r);
  }
  return out;
}

void Model::Impl::DiscardParts(std::vector<Request*>& parts) {
  if (!parts.empty() && parts.front()->is_part) delete parts.front()->req.sink;  // the SplitRequest
  for (Request* r : parts) delete r;
  parts.clear();
}

}  // namespace inferline
