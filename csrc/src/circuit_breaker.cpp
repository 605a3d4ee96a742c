// The protocol (labels S, D, C, W, P, K) is described in inferline/circuit_breaker.h.
#include "inferline/circuit_breaker.h"

#include <cassert>
#include <cmath>
#include <stdexcept>
#include <string>

namespace inferline {

namespace {

constexpr uint64_t kRequestOne = uint64_t{1} << 32;  // one outcome in the packed W word
constexpr uint64_t kFailureMask = 0xffffffffu;
// A window holding this many outcomes rolls over early, so its 32-bit halves never wrap.
constexpr uint64_t kMaxWindowRequests = uint64_t{1} << 31;

// kAllowed[from][to], indexed by BreakerState.
constexpr bool kAllowed[3][3] = {
    /* closed    -> */ {false, true, false},
    /* open      -> */ {false, false, true},
    /* half-open -> */ {true, true, false},
};

uint64_t SaturatingAdd(uint64_t a, uint64_t b) noexcept { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

constexpr Admission kReject{false, false};
constexpr Admission kAdmit{true, false};
constexpr Admission kProbe{true, true};

}  // namespace

const char* BreakerStateName(BreakerState s) noexcept {
  switch (s) {
    case BreakerState::kClosed: return "closed";
    case BreakerState::kOpen: return "open";
    case BreakerState::kHalfOpen: return "half_open";
  }
  return "unknown";
}

Status BreakerConfig::Validate(const std::string& context) const {
  if (!(error_rate >= 0.0 && error_rate < 1.0)) {  // also NaN
    return InvalidArgument(context + ": breaker.error_rate = " + std::to_string(error_rate) +
                           " is outside [0, 1) (0 turns the error-rate trigger off)");
  }
  if (half_open_probes == 0) {
    return InvalidArgument(context + ": breaker.half_open_probes must be >= 1 (0 would never close again)");
  }
  return Status::Ok();
}

bool ShouldTrip(const BreakerConfig& config, const BreakerWindow& window) noexcept {
  if (config.consecutive_failures > 0 && window.consecutive_failures >= config.consecutive_failures) return true;
  if (!config.rate_trigger_on()) return false;
  const uint32_t min_requests = config.min_requests > 0 ? config.min_requests : 1;
  if (window.requests < min_requests) return false;
  return static_cast<double>(window.failures) > config.error_rate * static_cast<double>(window.requests);
}

CircuitBreaker::CircuitBreaker(const BreakerConfig& config, uint64_t now_us) : config_(config) {
  Status st = config.Validate();
  if (!st.ok()) throw std::invalid_argument(st.ToString());
  window_start_us_.store(now_us, std::memory_order_relaxed);
}

Admission CircuitBreaker::Allow(uint64_t now_us) noexcept {
  const uint64_t word = word_.load(std::memory_order_acquire);  // S1, pairs with S in Transition
  switch (StateOf(word)) {
    case BreakerState::kClosed:
      return kAdmit;
    case BreakerState::kOpen:
      if (now_us < open_until_us_.load(std::memory_order_relaxed)) break;  // D, ordered by S1
      return AllowSlow(now_us);
    case BreakerState::kHalfOpen:
      // P: a stale read can only refuse while a slot is being freed (an approximation).
      if (probes_in_flight_.load(std::memory_order_relaxed) >= config_.half_open_probes) break;
      return AllowSlow(now_us);
  }
  k_.rejected.fetch_add(1, std::memory_order_relaxed);  // K
  return kReject;
}

Admission CircuitBreaker::AllowSlow(uint64_t now_us) noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  switch (StateOf(word_.load(std::memory_order_relaxed))) {
    case BreakerState::kClosed:
      return kAdmit;
    case BreakerState::kOpen:
      if (now_us < open_until_us_.load(std::memory_order_relaxed)) break;
      Transition(BreakerState::kHalfOpen, now_us);
      return ClaimProbeLocked();
    case BreakerState::kHalfOpen:
      return ClaimProbeLocked();
  }
  k_.rejected.fetch_add(1, std::memory_order_relaxed);  // K
  return kReject;
}

Admission CircuitBreaker::ClaimProbeLocked() noexcept {
  const uint32_t in_flight = probes_in_flight_.load(std::memory_order_relaxed);  // P, written under mu_ only
  if (in_flight >= config_.half_open_probes) {
    k_.rejected.fetch_add(1, std::memory_order_relaxed);  // K
    return kReject;
  }
  probes_in_flight_.store(in_flight + 1, std::memory_order_relaxed);  // P
  k_.probes.fetch_add(1, std::memory_order_relaxed);                  // K
  return kProbe;
}

void CircuitBreaker::Record(bool ok, bool probe, uint64_t now_us) noexcept {
  if (probe) {
    RecordProbe(ok, now_us);
    return;
  }
  const uint64_t word = word_.load(std::memory_order_acquire);  // S1
  // Open or half-open: an outcome of a request admitted before the trip; ignored.
  if (StateOf(word) == BreakerState::kClosed) RecordClosed(ok, word, now_us);
}

void CircuitBreaker::RecordProbe(bool ok, uint64_t now_us) noexcept {
  std::unique_lock<std::mutex> lock(mu_);
  const uint32_t in_flight = probes_in_flight_.load(std::memory_order_relaxed);
  if (in_flight > 0) probes_in_flight_.store(in_flight - 1, std::memory_order_relaxed);  // P
  (ok ? k_.probe_successes : k_.probe_failures).fetch_add(1, std::memory_order_relaxed);  // K
  const uint64_t word = word_.load(std::memory_order_relaxed);
  switch (StateOf(word)) {
    case BreakerState::kHalfOpen:
      Transition(ok ? BreakerState::kClosed : BreakerState::kOpen, now_us);
      return;
    case BreakerState::kOpen:
      return;  // another probe already failed this period
    case BreakerState::kClosed:
      lock.unlock();  // another probe closed it: a normal outcome now (Trip takes mu_)
      RecordClosed(ok, word, now_us);
      return;
  }
}

void CircuitBreaker::RecordClosed(bool ok, uint64_t word, uint64_t now_us) noexcept {
  BreakerWindow w;
  if (config_.consecutive_failures > 0) {
    if (ok) {
      consecutive_.store(0, std::memory_order_relaxed);  // C
    } else {
      w.consecutive_failures = consecutive_.fetch_add(1, std::memory_order_relaxed) + 1;  // C
    }
  }
  if (config_.rate_trigger_on()) {
    RollWindow(now_us);
    const uint64_t add = kRequestOne | (ok ? 0 : 1);
    const uint64_t counts = window_counts_.fetch_add(add, std::memory_order_relaxed) + add;  // W
    w.requests = static_cast<uint32_t>(counts >> 32);
    w.failures = static_cast<uint32_t>(counts & kFailureMask);
  }
  if (ShouldTrip(config_, w)) Trip(word, now_us);
}

void CircuitBreaker::RollWindow(uint64_t now_us) noexcept {
  uint64_t start = window_start_us_.load(std::memory_order_relaxed);  // W
  const bool expired = now_us >= start && now_us - start >= config_.window_us;
  const bool full = (window_counts_.load(std::memory_order_relaxed) >> 32) >= kMaxWindowRequests;
  if (!expired && !full) return;
  // One thread wins the rollover and clears the counts; see "Window rollover" in the header.
  if (window_start_us_.compare_exchange_strong(start, now_us, std::memory_order_relaxed)) {
    window_counts_.store(0, std::memory_order_relaxed);  // W
  }
}

void CircuitBreaker::Trip(uint64_t seen_word, uint64_t now_us) noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  // S: only the closed period whose counts decided the trip may be opened.
  if (word_.load(std::memory_order_relaxed) != seen_word) return;
  Transition(BreakerState::kOpen, now_us);
}

void CircuitBreaker::Transition(BreakerState to, uint64_t now_us) noexcept {
  const uint64_t word = word_.load(std::memory_order_relaxed);
  const BreakerState from = StateOf(word);
  assert(kAllowed[static_cast<int>(from)][static_cast<int>(to)]);
  (void)kAllowed;
  switch (to) {
    case BreakerState::kOpen:
      open_until_us_.store(SaturatingAdd(now_us, config_.open_us), std::memory_order_relaxed);  // D
      (from == BreakerState::kClosed ? k_.opened : k_.reopened).fetch_add(1, std::memory_order_relaxed);
      break;
    case BreakerState::kClosed:
      consecutive_.store(0, std::memory_order_relaxed);         // C
      window_counts_.store(0, std::memory_order_relaxed);       // W
      window_start_us_.store(now_us, std::memory_order_relaxed);  // W
      k_.recovered.fetch_add(1, std::memory_order_relaxed);     // K
      break;
    case BreakerState::kHalfOpen:
      break;
  }
  const uint64_t next = (((word >> 8) + 1) << 8) | static_cast<uint64_t>(to);
  word_.store(next, std::memory_order_release);  // S, pairs with S1: D and the resets are visible first
}

BreakerState CircuitBreaker::state(uint64_t now_us) const noexcept {
  const BreakerState s = StateOf(word_.load(std::memory_order_acquire));  // S1
  if (s == BreakerState::kOpen && now_us >= open_until_us_.load(std::memory_order_relaxed)) {
    return BreakerState::kHalfOpen;
  }
  return s;
}

BreakerCounters CircuitBreaker::counters() const noexcept {
  constexpr auto r = std::memory_order_relaxed;
  return BreakerCounters{k_.opened.load(r),          k_.reopened.load(r),        k_.recovered.load(r),
                         k_.rejected.load(r),        k_.probes.load(r),          k_.probe_successes.load(r),
                         k_.probe_failures.load(r)};
}

}  // namespace inferline
