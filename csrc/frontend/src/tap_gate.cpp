// The tap gate (tap_gate.h).
#include "tap_gate.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <random>

namespace inferline::grpcfe {

namespace {

constexpr uint64_t kWindowNs = 100'000'000;  // the copy cap's window: 100 ms

}  // namespace

// A per-thread xorshift64*.
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

uint64_t TapGate::PerWindow(double max_per_s) noexcept {
  return max_per_s > 0 ? std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(max_per_s * kWindowNs / 1e9))) : 0;
}

TapGate::Arm::Arm(std::vector<double> bounds, double s, double max_per_s)
    : bounds_ms(std::move(bounds)),
      share(s),
      per_window(PerWindow(max_per_s)),
      latency(new std::atomic<uint64_t>[bounds_ms.size() + 1]) {
  for (size_t i = 0; i <= bounds_ms.size(); ++i) latency[i].store(0, std::memory_order_relaxed);
}

// The cap is approximate under races (a window may let a few more through); never fewer.
bool TapGate::Arm::DrawCopy(uint64_t now_ns) noexcept {
  if (share <= 0 || (share < 1.0 && UniformDraw() >= share)) return false;
  if (per_window == 0) return true;
  const uint64_t w = now_ns / kWindowNs;
  uint64_t seen = window.load(std::memory_order_relaxed);
  if (seen != w && window.compare_exchange_strong(seen, w, std::memory_order_relaxed)) {
    used.store(0, std::memory_order_relaxed);
  }
  return used.fetch_add(1, std::memory_order_relaxed) < per_window;
}

void TapGate::SetShare(std::string_view model, double share) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  auto it = models_.find(model);
  if (share > 0) {
    if (it == models_.end()) it = models_.emplace(std::string(model), Entry{}).first;
    it->second.share = share > 1 ? 1.0 : share;
  } else if (it != models_.end()) {
    it->second.share = 0;
    if (!it->second.watch) models_.erase(it);
  }
  Refresh();
}

Status TapGate::SetArmWatch(std::string_view model, std::optional<ArmWatch> watch) {
  if (watch) {
    const auto& b = watch->latency_bounds_ms;
    for (size_t i = 0; i < b.size(); ++i) {
      if (!std::isfinite(b[i]) || (i > 0 && !(b[i] > b[i - 1]))) {
        return InvalidArgument("ArmWatch.latency_bounds_ms must be finite and ascending");
      }
    }
    for (const auto& [version, share] : watch->arms) {
      if (!(share >= 0 && share <= 1)) return InvalidArgument("ArmWatch.arms: a share must be in [0, 1]");
    }
    if (!(watch->max_copies_per_s >= 0) || !std::isfinite(watch->max_copies_per_s)) {
      return InvalidArgument("ArmWatch.max_copies_per_s must be finite and >= 0");
    }
  }
  std::unique_lock<std::shared_mutex> lock(mu_);
  auto it = models_.find(model);
  std::map<int64_t, std::shared_ptr<Arm>> old;
  if (it != models_.end() && it->second.watch) old.swap(it->second.watch->arms);
  if (watch) {
    if (it == models_.end()) it = models_.emplace(std::string(model), Entry{}).first;
    Watch w;
    w.tap_with_id = watch->tap_with_id;
    for (const auto& [version, share] : watch->arms) {
      auto prev = old.find(version);
      if (prev != old.end() && prev->second->bounds_ms == watch->latency_bounds_ms && prev->second->share == share &&
          prev->second->per_window == PerWindow(watch->max_copies_per_s)) {
        w.arms.emplace(version, std::move(prev->second));
        old.erase(prev);
      } else {
        w.arms.emplace(version, std::make_shared<Arm>(watch->latency_bounds_ms, share, watch->max_copies_per_s));
      }
    }
    it->second.watch = std::move(w);
  } else if (it != models_.end()) {
    it->second.watch.reset();
    if (it->second.share == 0) models_.erase(it);
  }
  for (auto& [version, arm] : old) retired_.push_back({{std::string(model), version}, std::move(arm)});
  Refresh();
  return Status::Ok();
}

ArmCounts TapGate::Take(const std::string& model, int64_t version, Arm& arm) {
  ArmCounts c;
  c.model = model;
  c.version = version;
  c.requests = arm.requests.exchange(0, std::memory_order_relaxed);
  c.errors = arm.errors.exchange(0, std::memory_order_relaxed);
  c.fallbacks = arm.fallbacks.exchange(0, std::memory_order_relaxed);
  c.latency.resize(arm.bounds_ms.size() + 1);
  for (size_t i = 0; i < c.latency.size(); ++i) c.latency[i] = arm.latency[i].exchange(0, std::memory_order_relaxed);
  return c;
}

std::vector<ArmCounts> TapGate::TakeArmCounts() {
  std::vector<ArmCounts> out;
  std::unique_lock<std::shared_mutex> lock(mu_);
  auto keep = [&out](ArmCounts c) {
    if (c.requests != 0 || c.errors != 0 || c.fallbacks != 0) out.push_back(std::move(c));
  };
  for (auto& [key, arm] : retired_) keep(Take(key.first, key.second, *arm));
  retired_.clear();
  for (auto& [model, entry] : models_) {
    if (!entry.watch) continue;
    for (auto& [version, arm] : entry.watch->arms) keep(Take(model, version, *arm));
  }
  return out;
}

void TapGate::Refresh() { any_.store(!models_.empty(), std::memory_order_relaxed); }

uint32_t TapGate::Decide(const Answered& a) {
  if (!any_.load(std::memory_order_relaxed)) return 0;
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = models_.find(a.model);
  if (it == models_.end()) return 0;
  const Entry& e = it->second;
  const InferResult& r = *a.result;
  uint32_t reasons = 0;
  if (e.share > 0 && (e.share >= 1.0 || UniformDraw() < e.share)) reasons |= kTapSampled;
  if (e.watch && a.requested_version == 0) {
    auto arm_it = e.watch->arms.find(r.primary_version);
    const bool own_input = r.status.code() == StatusCode::kInvalidArgument;
    const bool fell_back = r.fallback_reason != FallbackReason::kNone;
    if (arm_it != e.watch->arms.end() && !own_input) {
      Arm& arm = *arm_it->second;
      arm.requests.fetch_add(1, std::memory_order_relaxed);
      const double ms = static_cast<double>(a.latency_us) / 1000.0;
      const size_t bucket =
          static_cast<size_t>(std::lower_bound(arm.bounds_ms.begin(), arm.bounds_ms.end(), ms) - arm.bounds_ms.begin());
      arm.latency[bucket].fetch_add(1, std::memory_order_relaxed);
      if (!r.status.ok() || fell_back) arm.errors.fetch_add(1, std::memory_order_relaxed);
      if (r.status.ok() && fell_back) arm.fallbacks.fetch_add(1, std::memory_order_relaxed);
      if (r.status.ok() && !fell_back && arm.DrawCopy(a.now_ns)) reasons |= kTapCopy;
    }
    if (r.status.ok() && !fell_back && a.has_id && e.watch->tap_with_id) reasons |= kTapLabel;
  }
  return tap_ != nullptr ? reasons : 0;
}

void TapGate::Observe(TapRecord&& record) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  if (tap_ != nullptr) tap_->Observe(std::move(record));
}

void TapGate::Close() {
  std::unique_lock<std::shared_mutex> lock(mu_);
  tap_ = nullptr;
}

}  // namespace inferline::grpcfe
