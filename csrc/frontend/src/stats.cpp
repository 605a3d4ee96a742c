// Frontend-wide counters and the status-code mapping (shared.h).
#include "shared.h"

namespace inferline::grpcfe {

grpc::StatusCode WireCode(StatusCode code) noexcept {
  if (code == StatusCode::kResourceExhausted) return grpc::StatusCode::UNAVAILABLE;
  return static_cast<grpc::StatusCode>(static_cast<int>(code));
}

const char* WireCodeName(grpc::StatusCode code) noexcept {
  static const char* const kNames[] = {
      "OK",        "CANCELLED",         "UNKNOWN",           "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
      "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",       "UNAVAILABLE",      "DATA_LOSS",         "UNAUTHENTICATED"};
  const int c = static_cast<int>(code);
  return c >= 0 && c < 17 ? kNames[c] : "UNKNOWN";
}

std::string Shared::ModelLabel(std::string_view name) const {
  if (name.empty()) return "";
  return engine->Find(name) != nullptr ? std::string(name) : "_unknown";
}

// ---- counters -------------------------------------------------------------------
void FrontendCounters::Error(Protocol protocol, grpc::StatusCode code, std::string model_label) {
  std::lock_guard<std::mutex> lock(errors_mu_);
  ++errors_[{ProtocolName(protocol), WireCodeName(code), std::move(model_label)}];
}

FrontendCounters::StagePair& FrontendCounters::Stages(std::string_view model, int64_t version) {
  const StageLookup key{model, version};
  {
    std::shared_lock<std::shared_mutex> lock(stages_mu_);
    auto it = stages_.find(key);
    if (it != stages_.end()) return *it->second;
  }
  std::unique_lock<std::shared_mutex> lock(stages_mu_);
  auto it = stages_.find(key);
  if (it == stages_.end()) {
    it = stages_.emplace(StageKey{std::string(model), version}, std::make_unique<StagePair>()).first;
  }
  return *it->second;
}

void FrontendCounters::Fill(GrpcFrontendStats* out) const {
  {
    std::lock_guard<std::mutex> lock(errors_mu_);
    out->errors = errors_;
  }
  std::shared_lock<std::shared_mutex> lock(stages_mu_);
  for (const auto& [key, pair] : stages_) {
    out->stages[{key.model, std::to_string(key.version)}] = {pair->decode_us.Snapshot(), pair->encode_us.Snapshot()};
  }
}

}  // namespace inferline::grpcfe
