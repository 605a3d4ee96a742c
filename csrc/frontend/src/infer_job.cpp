// InferJob (infer_job.h): from request bytes to Router::Submit. The answer side is in
// infer_answer.cpp.
#include <grpcpp/support/proto_buffer_reader.h>

#include <algorithm>
#include <charconv>
#include <limits>

#include "infer_job.h"
#include "pytext.h"

namespace inferline::grpcfe {

namespace {

google::protobuf::ArenaOptions ArenaOn(char* block, size_t bytes) {
  google::protobuf::ArenaOptions o;
  o.initial_block = block;
  o.initial_block_size = bytes;
  return o;
}

// dataplane.kserve_priority_to_level: KServe 0 = default, 1 = highest -> core level (higher first).
uint32_t PriorityLevel(uint64_t priority, uint32_t levels) noexcept {
  if (priority == 0 || priority >= levels) return 0;
  return levels - static_cast<uint32_t>(priority);
}

// NOT_FOUND in Python's routing wording (routing/router.py), so that both frontends answer an
// unknown model or version alike: "model 'm' is not being served", "model 'm' version 3 is not
// being served (serving: 1, 2)"; the name whole, as Python's repr (the status is clipped later).
// `version` as the request wrote it (decimal).
Status NotServed(const Engine& engine, const std::string& name, const std::string& version) {
  std::string served;
  for (const LoadedModel& m : engine.List()) {
    if (m.name == name) served += (served.empty() ? "" : ", ") + std::to_string(m.version);
  }
  if (served.empty() || version.empty()) return NotFound("model " + PyRepr(name) + " is not being served");
  return NotFound("model " + PyRepr(name) + " version " + version + " is not being served (serving: " + served + ")");
}

// `text` as Python's int() reads a decimal version with an optional '-' ("" when it is not one;
// leading zeros dropped).
std::string DecimalText(const std::string& text) {
  size_t sign = !text.empty() && text[0] == '-' ? 1 : 0;
  if (text.size() == sign || !std::all_of(text.begin() + sign, text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return "";
  }
  size_t first = text.find_first_not_of('0', sign);
  std::string digits = first == std::string::npos ? "0" : text.substr(first);
  return sign && digits != "0" ? "-" + digits : digits;
}

}  // namespace

uint64_t NowNs() noexcept {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

InferJob::InferJob(std::shared_ptr<Shared> shared, Protocol protocol, const std::atomic<bool>* cancelled)
    : shared_(std::move(shared)),
      protocol_(protocol),
      cancelled_(cancelled),
      arena_(ArenaOn(arena_block_, sizeof arena_block_)) {}

InferJob::~InferJob() = default;

namespace {

std::optional<double> LeftS(std::chrono::system_clock::time_point deadline) {
  if (deadline == std::chrono::system_clock::time_point::max()) return std::nullopt;
  return std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count();
}

std::optional<uint64_t> LeftUs(std::optional<double> left_s) {
  if (!left_s) return std::nullopt;
  return static_cast<uint64_t>(std::max<double>(*left_s * 1e6, 1.0));  // convert: max(int(s * 1e6), 1)
}

}  // namespace

void InferJob::Run(const grpc::ByteBuffer& raw, std::chrono::system_clock::time_point deadline) {
  deadline_ = deadline;
  const std::optional<double> left_s = LeftS(deadline);
  AdmissionRefusal refusal;
  Admission::Entry entry = shared_->admission.Enter(left_s, nullptr, 0, &token_, &refusal);
  if (entry == Admission::Entry::kLobby) entry = Park(raw, left_s, &refusal);
  if (entry == Admission::Entry::kParked) return;  // maybe answered already, on another thread
  if (entry == Admission::Entry::kRefused) {
    Fail(Status(refusal.code, std::move(refusal.message)), refusal.retry_after_ms);
    return;
  }
  Proceed(raw, LeftUs(left_s));
}

// Into the lobby with the request's bytes and a reference for the lobby, unless admitted or
// refused after all.
Admission::Entry InferJob::Park(const grpc::ByteBuffer& raw, std::optional<double> left_s, AdmissionRefusal* refusal) {
  parked_raw_ = raw;
  Ref();
  const Admission::Entry entry = shared_->admission.Enter(left_s, this, raw.Length(), &token_, refusal);
  if (entry != Admission::Entry::kParked) {
    parked_raw_.Clear();
    Unref();  // the owner still holds one
  }
  return entry;
}

void InferJob::Admitted(const AdmissionToken& token) noexcept {
  token_ = token;
  grpc::ByteBuffer raw;
  raw.Swap(&parked_raw_);
  Proceed(raw, LeftUs(LeftS(deadline_)));
  Unref();  // the lobby's
}

void InferJob::Refused(AdmissionRefusal refusal) noexcept {
  parked_raw_.Clear();
  Fail(Status(refusal.code, std::move(refusal.message)), refusal.retry_after_ms);
  Unref();  // the lobby's
}

void InferJob::LeaveLobby() noexcept {
  if (!shared_->admission.Withdraw(this)) return;
  parked_raw_.Clear();
  Unref();  // the lobby's (the owner still holds one)
}

void InferJob::Proceed(const grpc::ByteBuffer& raw, std::optional<uint64_t> left_us) {
  admitted_ = true;
  start_ns_ = NowNs();
  Status st = Parse(raw);
  if (st.ok()) st = Prepare(left_us);
  if (st.ok()) st = Submit();
  if (!st.ok()) Fail(st);
}

Status InferJob::Parse(const grpc::ByteBuffer& raw) {
  grpc::ByteBuffer bytes(raw);  // shares the slices; the reader needs a mutable buffer
  grpc::ProtoBufferReader reader(&bytes);
  auto* msg = google::protobuf::Arena::CreateMessage<inference::ModelInferRequest>(&arena_);
  if (!msg->ParseFromZeroCopyStream(&reader)) {
    // As the Python frontend words it (its messages live in package inferline.kserve).
    return InvalidArgument("malformed request message: Error parsing message with type "
                           "'inferline.kserve.ModelInferRequest'");
  }
  msg_ = msg;
  return Status::Ok();
}

// The order of convert.decode_infer_request and dataplane.infer: a long `outputs` list first
// needs the model (grpc_frontend._decode), then the tensors, the outputs, the names.
Status InferJob::Prepare(std::optional<uint64_t> deadline_us) {
  const bool many_outputs = msg_->outputs_size() > kFewOutputs;
  if (many_outputs) INFERLINE_RETURN_IF_ERROR(Resolve());
  INFERLINE_RETURN_IF_ERROR(Decode(*msg_, deadline_us, /*check_outputs=*/false, &decoded_));
  if (many_outputs && static_cast<size_t>(msg_->outputs_size()) > model_->config().outputs.size()) {
    return InvalidArgument("model " + Quote(msg_->model_name()) + ": " + std::to_string(msg_->outputs_size()) +
                           " outputs requested, but it has " + std::to_string(model_->config().outputs.size()) +
                           " (name each output at most once)");
  }
  if (msg_->outputs_size() != 0) INFERLINE_RETURN_IF_ERROR(CheckRequestedOutputs(*msg_));
  if (model_ == nullptr) INFERLINE_RETURN_IF_ERROR(Resolve());
  INFERLINE_RETURN_IF_ERROR(CheckNames());
  return BuildRequest();
}

// model_version: "" = routed (0), digits = that version, anything else NOT_FOUND.
Status InferJob::Resolve() {
  const std::string& name = msg_->model_name();
  const std::string& text = msg_->model_version();
  int64_t version = 0;
  if (!text.empty()) {
    const bool digits = std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits) {
      Expected<std::shared_ptr<Model>> any = ResolveInputsFor(*shared_->router, *shared_->engine, name, 0);
      if (!any.ok()) return any.status().code() == StatusCode::kNotFound ? NotServed(*shared_->engine, name, "")
                                                                          : any.status();
      const std::string decimal = DecimalText(text);  // "-1": a number no version has
      if (!decimal.empty()) return NotServed(*shared_->engine, name, decimal);
      return NotFound("model " + PyRepr(name) + ": version " + PyRepr(text) + " is not a number");
    }
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), version);
    if (ec != std::errc() || end != text.data() + text.size() || version == 0) {
      return NotServed(*shared_->engine, name, DecimalText(text));
    }
  }
  Expected<std::shared_ptr<Model>> m = ResolveInputsFor(*shared_->router, *shared_->engine, name, version);
  if (!m.ok()) {
    if (m.status().code() != StatusCode::kNotFound) return m.status();
    return NotServed(*shared_->engine, name, version == 0 ? "" : std::to_string(version));
  }
  model_ = std::move(m).value();
  route_.version = version;
  requested_version_ = version;
  return Status::Ok();
}

// dataplane._inputs (a name given twice) and _requested_outputs (names the version has).
Status InferJob::CheckNames() {
  const ModelConfig& c = model_->config();
  const auto& inputs = decoded_.inputs;
  for (size_t i = 1; i < inputs.size(); ++i) {  // few inputs: no set to allocate
    for (size_t j = 0; j < i; ++j) {
      if (inputs[i].tensor->name() == inputs[j].tensor->name()) {
        return InvalidArgument(c.Describe() + " input " + PyRepr(inputs[i].tensor->name()) + ": given twice");
      }
    }
  }
  selection_.clear();
  for (const auto& o : msg_->outputs()) {
    auto it = std::find_if(c.outputs.begin(), c.outputs.end(), [&](const TensorSpec& s) { return s.name == o.name(); });
    if (it == c.outputs.end()) {
      std::string names;
      for (const TensorSpec& s : c.outputs) names += (names.empty() ? "" : ", ") + s.name;
      return InvalidArgument(c.Describe() + ": unknown output " + PyRepr(o.name()) + " (outputs: " + names + ")");
    }
    selection_.push_back(static_cast<int>(it - c.outputs.begin()));
  }
  return Status::Ok();
}

// The binding's ThrowNameMismatch message (csrc/bindings/module.cpp).
Status InferJob::NameMismatch() const {
  const ModelConfig& c = model_->config();
  std::string unknown, missing, declared;
  for (const WireInput& in : decoded_.inputs) {
    const std::string& name = in.tensor->name();
    bool known = std::any_of(c.inputs.begin(), c.inputs.end(), [&](const TensorSpec& s) { return s.name == name; });
    if (!known) unknown += (unknown.empty() ? "'" : ", '") + name + "'";
  }
  for (const TensorSpec& s : c.inputs) {
    bool given = std::any_of(decoded_.inputs.begin(), decoded_.inputs.end(),
                             [&](const WireInput& in) { return in.tensor->name() == s.name; });
    if (!given) missing += (missing.empty() ? "'" : ", '") + s.name + "'";
    declared += (declared.empty() ? "" : ", ") + s.name;
  }
  std::string msg = c.Describe() + ":";
  if (!unknown.empty()) msg += " unknown input " + unknown + ";";
  if (!missing.empty()) msg += " input " + missing + ": missing from the request;";
  msg.back() = ' ';
  return InvalidArgument(msg + "(inputs: " + declared + ")");
}

// The binding's RequestFor and Router_Submit: inputs in config order, priority, deadline, route.
Status InferJob::BuildRequest() {
  const ModelConfig& c = model_->config();
  request_.inputs.resize(c.inputs.size());
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const TensorSpec& spec = c.inputs[i];
    auto it = std::find_if(decoded_.inputs.begin(), decoded_.inputs.end(),
                           [&](const WireInput& in) { return in.tensor->name() == spec.name; });
    if (it == decoded_.inputs.end()) return NameMismatch();
    const auto& dims = it->tensor->shape();
    if (dims.size() > Shape::kMaxRank) {
      return InvalidArgument(c.Describe() + " input '" + spec.name + "': expected shape " + spec.shape.ToString() +
                             ", got " + std::to_string(dims.size()) + " dimensions");
    }
    TensorView& v = request_.inputs[i];
    v.data = it->data;
    v.dtype = it->dtype;
    v.shape.rank = dims.size();
    std::copy(dims.begin(), dims.end(), v.shape.dims);
  }
  if (decoded_.inputs.size() != c.inputs.size()) return NameMismatch();
  request_.priority = PriorityLevel(decoded_.priority, c.priority_levels);
  if (decoded_.timeout_us) {
    constexpr uint64_t kMax = std::numeric_limits<int64_t>::max();
    const uint64_t now = model_->NowUs();
    request_.deadline_us = *decoded_.timeout_us >= kMax - now ? kMax : now + *decoded_.timeout_us;
  }
  request_.sink = this;
  request_.cancelled = cancelled_;
  route_.routing_key = decoded_.routing_key;
  route_.has_routing_key = decoded_.has_routing_key;
  route_.inputs_for = model_;
  // Without a policy the router passes straight to the engine: pin the version converted for.
  if (route_.version == 0 && shared_->router->DefaultVersion(msg_->model_name()) == 0) {
    route_.version = c.version;
  }
  return Status::Ok();
}

Status InferJob::Submit() {
  decode_ns_ = NowNs() - start_ns_;
  Ref();  // the core's, dropped after Deliver
  Status st = shared_->router->Submit(msg_->model_name(), route_, request_);
  if (!st.ok()) Unref();  // never answered: the owner still holds its reference
  return st;
}

}  // namespace inferline::grpcfe
