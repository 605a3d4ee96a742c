// Frontend-wide counters, the tap gate and the status-code mapping (shared.h).
#include <chrono>
#include <random>

#include "shared.h"

namespace inferline::grpcfe {

namespace {

// A per-thread xorshift64* draw in [0, 1): sampling the tap costs a few multiplies.
double UniformDraw() noexcept {
  thread_local uint64_t state = [] {
    std::random_device rd;
    uint64_t s = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    return s != 0 ? s : 0x9E3779B97F4A7C15ull;
  }();
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return static_cast<double>((state * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
}

}  // namespace

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

// ---- tap ------------------------------------------------------------------------
void TapGate::SetShare(std::string_view model, double share) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  if (share > 0) {
    shares_.insert_or_assign(std::string(model), share > 1 ? 1.0 : share);
  } else {
    auto it = shares_.find(model);
    if (it != shares_.end()) shares_.erase(it);
  }
  any_share_.store(!shares_.empty() && tap_ != nullptr, std::memory_order_relaxed);
}

bool TapGate::Sample(std::string_view model) const {
  if (!any_share_.load(std::memory_order_relaxed)) return false;
  double share = 0;
  {
    std::shared_lock<std::shared_mutex> lock(mu_);
    auto it = shares_.find(model);
    if (it == shares_.end()) return false;
    share = it->second;
  }
  return share >= 1.0 || UniformDraw() < share;
}

void TapGate::Observe(TapRecord&& record) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  if (tap_ != nullptr) tap_->Observe(std::move(record));
}

void TapGate::Close() {
  std::unique_lock<std::shared_mutex> lock(mu_);
  tap_ = nullptr;
  any_share_.store(false, std::memory_order_relaxed);
}

}  // namespace inferline::grpcfe
