// Batch execution: gather (with fused preprocessing) into one aligned buffer
// per input, run the backend, scatter zero-copy row slices of its outputs, and
// deliver each sink's answers in one call. A failing batch is bisected until
// the failing requests are isolated. A model placed on a GPU runs the same steps
// through its executor's GpuLane (gpu_lane.h): pinned gather, copy in, kernels,
// the device backend, copy out.
#include <algorithm>
#include <exception>
#include <utility>

#include "model_impl.h"

namespace inferline {

namespace {

// Delivers results grouped by sink: one Deliver call per sink.
void DeliverGrouped(Request* const* requests, InferResult* results, size_t count) {
  size_t done = 0;
  std::vector<InferResult> group;
  std::vector<bool> sent(count, false);
  while (done < count) {
    size_t first = 0;
    while (sent[first]) ++first;
    CompletionSink* sink = requests[first]->req.sink;
    group.clear();
    for (size_t i = first; i < count; ++i) {
      if (!sent[i] && requests[i]->req.sink == sink) {
        group.push_back(std::move(results[i]));
        sent[i] = true;
        ++done;
      }
    }
    sink->Deliver(group.data(), group.size());
  }
}

void Finish(Model::Impl& m, Request* const* requests, InferResult* results, size_t count, uint64_t now_us) {
  uint64_t rows = 0;
  for (size_t i = 0; i < count; ++i) {
    const Request* r = requests[i];
    rows += r->rows;
    results[i].answered_model = m.config_.name;
    results[i].answered_version = m.config_.version;
    if (!r->is_part) RecordOutcome(m.stats_, results[i].status, results[i].queue_us, now_us - r->enqueue_us);
  }
  m.unanswered_rows_.fetch_sub(rows, std::memory_order_relaxed);
  DeliverGrouped(requests, results, count);
  for (size_t i = 0; i < count; ++i) delete requests[i];
}

// The first half of requests[0, count) and its rows: where a failing range is bisected.
std::pair<size_t, uint32_t> FirstHalf(Request* const* requests, size_t count) {
  const size_t half = count / 2;
  uint32_t rows = 0;
  for (size_t i = 0; i < half; ++i) rows += requests[i]->rows;
  return {half, rows};
}

}  // namespace

void AnswerWithStatus(Model::Impl& m, std::vector<Request*>& requests, const Status& status) {
  if (requests.empty()) return;
  uint64_t now = m.clock_->NowUs();
  std::vector<InferResult> results(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    results[i].tag = requests[i]->req.tag;
    results[i].status = status;
    results[i].queue_us = now - requests[i]->enqueue_us;
  }
  Finish(m, requests.data(), results.data(), requests.size(), now);
  requests.clear();
}

std::vector<NamedTensor> Model::Impl::Gather(const Batch& batch) {
  std::vector<NamedTensor> inputs;
  inputs.reserve(backend_inputs_.size());
  for (size_t i = 0; i < backend_inputs_.size(); ++i) {
    const TensorSpec& spec = backend_inputs_[i];
    Shape shape = spec.shape;
    shape.dims[0] = batch.rows;
    Tensor t = Tensor::Allocate(spec.dtype, shape);
    const size_t row_bytes = t.RowBytes();
    char* dst = static_cast<char*>(t.data);
    for (const Request* r : batch.requests) {
      PreprocessRows(config_.preprocessing[i], r->req.inputs[i], dst);
      dst += row_bytes * r->rows;
    }
    inputs.push_back(NamedTensor{spec.name, std::move(t)});
  }
  return inputs;
}

void Model::Impl::RunBatch(Batch& batch, GpuLane* lane) {
  uint64_t start = clock_->NowUs();
  if (lane != nullptr) {
    Status st = lane->Stage(batch.requests.data(), batch.requests.size(), batch.rows);
    if (!st.ok()) {
      lane->Recover();
      Respond(batch.requests.data(), batch.requests.size(), {},
              Status(st.code(), context_ + ": staging the batch on the GPU failed: " + st.message()), start,
              clock_->NowUs());
      return;
    }
    RunRangeGpu(*lane, batch.requests.data(), batch.requests.size(), 0, batch.rows, true, start);
    return;
  }
  std::vector<NamedTensor> inputs = Gather(batch);
  RunRange(inputs, batch.requests.data(), batch.requests.size(), 0, batch.rows, true, start);
}

void Model::Impl::RunRangeGpu(GpuLane& lane, Request* const* requests, size_t count, uint32_t row_begin,
                              uint32_t rows, bool top_level, uint64_t start_us) {
  uint64_t t0 = clock_->NowUs();
  std::vector<Tensor> outputs;
  Status st;
  try {
    st = lane.Run(*device_backend_, row_begin, rows);
  } catch (const std::exception& e) {
    st = Internal(std::string("backend threw: ") + e.what());
  } catch (...) {
    st = Internal("backend threw a non-standard exception");
  }
  if (st.ok()) st = lane.Fetch(row_begin, rows, &outputs);
  const bool failed = !st.ok();
  if (failed) {
    lane.Recover();
    st = Status(st.code(), context_ + ": backend failed on the GPU: " + st.message());
  }
  uint64_t t1 = clock_->NowUs();
  RecordRun(top_level, rows, !failed, start_us, t0, t1);
  if (failed && count > 1) {  // isolate the failing rows
    const auto [half, half_rows] = FirstHalf(requests, count);
    RunRangeGpu(lane, requests, half, row_begin, half_rows, false, start_us);
    RunRangeGpu(lane, requests + half, count - half, row_begin + half_rows, rows - half_rows, false, start_us);
    return;
  }
  Respond(requests, count, outputs, st, start_us, t1);
}

void Model::Impl::RecordRun(bool top_level, uint32_t rows, bool ok, uint64_t start_us, uint64_t t0, uint64_t t1) {
  if (!top_level) return;
  stats_.RecordBatch(rows, t1 - start_us, t1);
  if (ok) {
    estimator_.Observe(rows, t1 - t0);
    const ComputeModel m = estimator_.Current();
    estimate_fixed_us_.store(m.fixed_us, std::memory_order_relaxed);
    estimate_per_row_us_.store(m.per_row_us, std::memory_order_relaxed);
  }
}

void Model::Impl::Respond(Request* const* requests, size_t count, const std::vector<Tensor>& outputs,
                          const Status& st, uint64_t start_us, uint64_t t1) {
  std::vector<InferResult> results(count);
  uint32_t offset = 0;
  for (size_t i = 0; i < count; ++i) {
    InferResult& res = results[i];
    res.tag = requests[i]->req.tag;
    res.queue_us = start_us - requests[i]->enqueue_us;
    res.compute_us = t1 - start_us;
    res.status = st;
    if (st.ok()) {
      res.outputs.reserve(outputs.size());
      for (const Tensor& t : outputs) res.outputs.push_back(t.SliceRows(offset, requests[i]->rows));
    }
    offset += requests[i]->rows;
  }
  Finish(*this, requests, results.data(), count, clock_->NowUs());
}

// Runs the backend on `inputs` (dim 0 = rows) and matches its outputs to the
// declared ones, in config order.
// `backend_failed` tells a failure of Run itself (worth bisecting) from bad outputs.
Status Model::Impl::RunBackend(const std::vector<NamedTensor>& inputs, uint32_t rows,
                               std::vector<Tensor>* outputs, bool* backend_failed) {
  std::vector<NamedTensor> produced;
  Status st;
  // A returned error is worth bisecting (it may come from some rows); an
  // exception breaks the Backend contract, so the whole batch gets INTERNAL and
  // the backend is not called again for it (backend.h).
  try {
    st = backend_->Run(inputs, &produced);
  } catch (const std::exception& e) {
    *backend_failed = false;
    return Internal(context_ + ": backend threw: " + e.what());
  } catch (...) {
    *backend_failed = false;
    return Internal(context_ + ": backend threw a non-standard exception");
  }
  *backend_failed = !st.ok();
  if (!st.ok()) return Status(st.code(), context_ + ": backend failed: " + st.message());
  outputs->clear();
  for (const TensorSpec& spec : config_.outputs) {
    auto it = std::find_if(produced.begin(), produced.end(), [&](const NamedTensor& t) { return t.name == spec.name; });
    if (it == produced.end()) return Internal(context_ + ": backend returned no output '" + spec.name + "'");
    const Tensor& t = it->tensor;
    bool ok = t.dtype == spec.dtype && t.shape.rank == spec.shape.rank && t.shape.dims[0] == rows;
    for (int d = 1; ok && d < t.shape.rank; ++d) {
      ok = spec.shape.dims[d] == -1 ? t.shape.dims[d] >= 0 : spec.shape.dims[d] == t.shape.dims[d];
    }
    if (!ok) {
      return Internal(context_ + ": backend output '" + spec.name + "' is " + DataTypeName(t.dtype) + " " +
                      t.shape.ToString() + " for " + std::to_string(rows) + " rows; declared " +
                      DataTypeName(spec.dtype) + " " + spec.shape.ToString());
    }
    // Callers get slices that outlive the batch: the tensor must own its bytes.
    if (t.ByteSize() != 0 && (t.data == nullptr || t.owner == nullptr)) {
      return Internal(context_ + ": backend output '" + spec.name + "' " +
                      (t.data == nullptr ? "has no data" : "does not own its memory (Tensor::owner is empty)"));
    }
    outputs->push_back(t);
  }
  return Status::Ok();
}

void Model::Impl::RunRange(const std::vector<NamedTensor>& inputs, Request* const* requests, size_t count,
                           uint32_t row_begin, uint32_t rows, bool top_level, uint64_t start_us) {
  std::vector<NamedTensor> sub;
  const std::vector<NamedTensor>* in = &inputs;
  if (!top_level) {
    sub.reserve(inputs.size());
    for (const auto& t : inputs) sub.push_back(NamedTensor{t.name, t.tensor.SliceRows(row_begin, rows)});
    in = &sub;
  }
  uint64_t t0 = clock_->NowUs();
  std::vector<Tensor> outputs;
  bool backend_failed = false;
  Status st = RunBackend(*in, rows, &outputs, &backend_failed);
  uint64_t t1 = clock_->NowUs();
  RecordRun(top_level, rows, st.ok(), start_us, t0, t1);
  if (backend_failed && count > 1) {  // isolate the failing rows
    const auto [half, half_rows] = FirstHalf(requests, count);
    RunRange(inputs, requests, half, row_begin, half_rows, false, start_us);
    RunRange(inputs, requests + half, count - half, row_begin + half_rows, rows - half_rows, false, start_us);
    return;
  }
  Respond(requests, count, outputs, st, start_us, t1);
}

}  // namespace inferline
