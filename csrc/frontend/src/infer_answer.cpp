// InferJob (infer_job.h): the answer side. Refusals and bad requests (Fail) and the core's
// answers (Deliver) become one Reply each; OK answers are encoded here, on the executor thread
// that delivered them, then timed into the stage histograms and, when sampled, tapped.
#include <cstring>

#include "infer_job.h"
#include "pytext.h"

namespace inferline::grpcfe {

namespace {

// A deep copy (the tap must not keep a batch's output buffer alive).
Tensor CopyOf(const void* data, DataType dtype, const Shape& shape) {
  Tensor t = Tensor::Allocate(dtype, shape);
  const size_t bytes = t.ByteSize();
  if (bytes != 0) std::memcpy(t.data, data, bytes);
  return t;
}

}  // namespace

void InferJob::Fail(const Status& status, int64_t retry_after_ms) {
  const grpc::StatusCode code = WireCode(status.code());
  std::string message = ClipMessage(status.message());
  const bool client_gone = cancelled_ != nullptr && cancelled_->load(std::memory_order_relaxed);
  if (!(client_gone && code == grpc::StatusCode::CANCELLED)) {
    shared_->counters.Error(protocol_, code, msg_ != nullptr ? shared_->ModelLabel(msg_->model_name()) : "");
  }
  LobbyWaiter* released = nullptr;
  if (admitted_) {
    admitted_ = false;
    released = shared_->admission.Done(token_);
  }
  Answer answer;
  if (protocol_ == Protocol::kStream) {
    answer.body = EncodeStreamError(message, msg_);
  } else {
    answer.status = grpc::Status(code, std::move(message));
    answer.retry_after_ms = retry_after_ms;
  }
  Reply(std::move(answer));
  Admission::RunReleased(released);
}

void InferJob::Deliver(InferResult* results, size_t count) noexcept {
  for (size_t i = 0; i < count; ++i) HandleResult(results[i]);  // one request per job: count is 1
  Unref();  // the core's reference
}

void InferJob::HandleResult(InferResult& result) {
  if (cancelled_ != nullptr && cancelled_->load(std::memory_order_relaxed)) {
    Fail(Status(StatusCode::kCancelled, "call cancelled"));  // the client is gone: nothing to encode
    return;
  }
  const uint64_t encode_start = NowNs();  // the tap's decision below is part of the encode stage
  std::shared_ptr<Model> other;  // keeps a fallback's config alive while encoding
  const ModelConfig* config = nullptr;
  if (result.status.ok()) {
    const ModelConfig& mine = model_->config();
    if (result.answered_model == mine.name && result.answered_version == mine.version) {
      config = &mine;
    } else if ((other = shared_->engine->Find(result.answered_model, result.answered_version)) != nullptr) {
      config = &other->config();
    } else {
      result.status = Internal("model " + Quote(result.answered_model) + " version " +
                               std::to_string(result.answered_version) + " answered and is no longer loaded");
    }
  }
  // Counted and drawn before the answer goes out, so that a share changed after the client saw
  // it does not apply to it.
  const uint64_t now_ns = NowNs();
  const uint32_t tapped = shared_->tap.Decide(
      {msg_->model_name(), requested_version_, &result, !msg_->id().empty(), (now_ns - start_ns_) / 1000, now_ns});
  Answer answer;
  Status st = config != nullptr ? Encode(result, *config, &answer) : result.status;
  if (!st.ok()) {
    Fail(st);
    if (tapped != 0) Tap(result, nullptr, tapped);
    return;
  }
  admitted_ = false;
  LobbyWaiter* released = shared_->admission.Done(token_);
  FrontendCounters::StagePair& stages = shared_->counters.Stages(result.answered_model, result.answered_version);
  stages.decode_us.Record(decode_ns_ / 1000);
  stages.encode_us.Record((NowNs() - encode_start) / 1000);
  Reply(std::move(answer));
  if (tapped != 0) Tap(result, config, tapped);
  Admission::RunReleased(released);  // after this answer went out
}

// The OK answer with the requested outputs (by name, in the answering version's config);
// INTERNAL if a requested output is not among them (a fallback with other outputs).
Status InferJob::Encode(const InferResult& result, const ModelConfig& config, Answer* answer) {
  std::vector<int> picked;
  const std::vector<int>* selection = nullptr;
  if (msg_->outputs_size() != 0) {
    if (&config == &model_->config()) {
      selection = &selection_;
    } else {
      for (const auto& o : msg_->outputs()) {
        int found = -1;
        for (size_t k = 0; k < config.outputs.size(); ++k) {
          if (config.outputs[k].name == o.name()) found = static_cast<int>(k);
        }
        if (found < 0) return Internal(config.Describe() + " answered without output " + PyRepr(o.name()));
        picked.push_back(found);
      }
      selection = &picked;
    }
  }
  Answered what{&config, &result, msg_->id(), selection};
  answer->body = EncodeResponse(what, protocol_ == Protocol::kStream);
  return Status::Ok();
}

void InferJob::Tap(const InferResult& result, const ModelConfig* answered, uint32_t reasons) {
  TapRecord rec;
  rec.reasons = reasons;
  rec.model = msg_->model_name();
  rec.request_id = msg_->id();
  const ModelConfig& c = model_->config();
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    rec.input_names.push_back(c.inputs[i].name);
    const TensorView& v = request_.inputs[i];
    rec.inputs.push_back(CopyOf(v.data, v.dtype, v.shape));
  }
  rec.result.tag = result.tag;
  rec.result.status = result.status;
  for (const Tensor& t : result.outputs) rec.result.outputs.push_back(CopyOf(t.data, t.dtype, t.shape));
  rec.result.queue_us = result.queue_us;
  rec.result.compute_us = result.compute_us;
  rec.result.answered_model = result.answered_model;
  rec.result.answered_version = result.answered_version;
  rec.result.fallback_reason = result.fallback_reason;
  rec.result.primary_version = result.primary_version;
  if (answered != nullptr && result.status.ok()) {
    for (const TensorSpec& s : answered->outputs) rec.output_names.push_back(s.name);
  }
  rec.latency_us = (NowNs() - start_ns_) / 1000;
  rec.requested_version = requested_version_;
  shared_->tap.Observe(std::move(rec));
}

}  // namespace inferline::grpcfe
