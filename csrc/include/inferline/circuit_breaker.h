// inferline/circuit_breaker.h — stop sending traffic to a model version that keeps failing.
//
// What: a three-state breaker per primary (model version). The router asks
// Allow(now) before each request: admitted requests go to the primary, the rest
// go to the fallback. Every admitted request must be reported once with
// Record(ok, admission.probe, now); rejected ones are not reported.
//
//   closed ──(trip: N consecutive failures, or window error rate > error_rate
//   ▲   │        with >= min_requests in the window)──▶ open
//   │   ▼                                                │ open_us passed (next Allow)
//   │  open ◀──(a probe fails: open again for open_us)── half-open
//   └──────────(a probe succeeds: counts reset)──────────┘
//
// In half-open at most half_open_probes admitted probes are outstanding; every
// other request is rejected. Times are microseconds on the caller's monotonic
// clock (pass Model::NowUs() or Clock::NowUs()); the breaker reads no clock.
//
// Protocol (labels are on the members and at their uses in circuit_breaker.cpp):
//   S  word_ packs (epoch << 8 | state). Every change happens under mu_ through
//      Transition(), which writes the open deadline (D) first and then stores S
//      with release; readers load S with acquire (S1) and then see D.
//      The epoch grows by one per transition, so a trip decided on counts of an
//      earlier closed period is dropped (Trip compares epochs under mu_).
//   D  open_until_us_: written before S (release) under mu_, read after S1.
//   C  consecutive_ and W window_counts_ (requests << 32 | failures) and
//      window_start_us_: updated lock-free by Record in the closed state with
//      relaxed RMWs; they only feed the trip decision. Reset under mu_ on close.
//   P  probes_in_flight_: written only under mu_; read relaxed without the lock
//      by Allow in half-open to refuse cheaply when every slot is taken.
//   K  counters: relaxed increments, read by counters().
//
// Thread-safety: every method is safe from any number of threads at once. In
// the closed state Allow is one acquire load and Record a few relaxed RMWs (no
// lock). Open-state rejections are lock-free; mu_ is taken only to change
// state, to admit or finish a probe, and by the first Allow after open_us.
//
// Acceptable approximations (all bounded by the requests in flight at once):
//  - Windows are tumbling: one starts at construction, on recovery, and at the
//    first outcome recorded window_us or more after the current one started.
//    Rollover is not atomic with counting: outcomes recorded by other threads
//    while one thread resets the window may be dropped or land in the window on
//    either side.
//  - "Consecutive" is in the order Record calls reach the counter.
//  - A request admitted while closed but finished after the breaker opened is
//    ignored; if the breaker already recovered by then, it counts in the new
//    closed period (Record has no admission epoch).
//  - A probe that finishes after another probe already decided the half-open
//    period still holds its slot until it is recorded (so a slot is never handed
//    out twice), and is then counted like a normal request of the current state.
//    Callers must Record every admitted probe, or its slot is lost.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "inferline/stats.h"
#include "inferline/status.h"

namespace inferline {

enum class BreakerState : uint8_t { kClosed = 0, kOpen = 1, kHalfOpen = 2 };
const char* BreakerStateName(BreakerState s) noexcept;  // "closed", "open", "half_open"

struct BreakerConfig {
  // Open after this many failures in a row (in the closed state). 0 = trigger off.
  uint32_t consecutive_failures = 5;
  // Open when failures / requests in the current window exceeds this (strictly),
  // in [0, 1). 0 = trigger off.
  double error_rate = 0.5;
  // The error-rate trigger needs at least this many outcomes in the window
  // (0 behaves as 1).
  uint32_t min_requests = 20;
  // Length of the tumbling window of the error-rate trigger. 0 = trigger off.
  uint64_t window_us = 10'000'000;
  // How long the breaker stays open before the next Allow half-opens it
  // (0 = the next Allow is already a probe).
  uint64_t open_us = 5'000'000;
  // Most probes outstanding at once in half-open; >= 1.
  uint32_t half_open_probes = 1;

  // INVALID_ARGUMENT naming `context` and the field at fault.
  Status Validate(const std::string& context = "breaker") const;
  bool rate_trigger_on() const noexcept { return error_rate > 0.0 && window_us > 0; }
};

// The outcome counts of one closed period that the trip decision looks at.
struct BreakerWindow {
  uint32_t consecutive_failures = 0;
  uint32_t requests = 0;  // outcomes in the current window
  uint32_t failures = 0;  // failed outcomes in the current window
};

// Pure: should a closed breaker open, given these counts? (Either trigger fires.)
bool ShouldTrip(const BreakerConfig& config, const BreakerWindow& window) noexcept;

struct Admission {
  bool admit = false;  // true: send to the primary and Record the outcome
  bool probe = false;  // admitted as a half-open probe: pass to Record
};

struct BreakerCounters {
  uint64_t opened = 0;           // closed -> open (trips)
  uint64_t reopened = 0;         // half-open -> open (a probe failed)
  uint64_t recovered = 0;        // half-open -> closed (a probe succeeded)
  uint64_t rejected = 0;         // Allow returned admit == false (open, or half-open with no slot)
  uint64_t probes = 0;           // admitted as probes
  uint64_t probe_successes = 0;  // probes recorded ok
  uint64_t probe_failures = 0;   // probes recorded failed
};

class CircuitBreaker {
 public:
  // `config` must be valid (see Validate); throws std::invalid_argument otherwise.
  explicit CircuitBreaker(const BreakerConfig& config, uint64_t now_us = 0);
  CircuitBreaker(const CircuitBreaker&) = delete;
  CircuitBreaker& operator=(const CircuitBreaker&) = delete;

  Admission Allow(uint64_t now_us) noexcept;
  // Once per admitted request: ok = the primary answered successfully; probe =
  // Admission::probe of that request.
  void Record(bool ok, bool probe, uint64_t now_us) noexcept;

  // The state the next Allow at now_us would see: an open breaker whose open_us
  // has passed reports kHalfOpen. No side effects.
  BreakerState state(uint64_t now_us) const noexcept;
  BreakerCounters counters() const noexcept;
  const BreakerConfig& config() const noexcept { return config_; }

 private:
  static constexpr uint64_t kStateMask = 0xff;
  static BreakerState StateOf(uint64_t word) noexcept { return static_cast<BreakerState>(word & kStateMask); }

  Admission AllowSlow(uint64_t now_us) noexcept;
  Admission ClaimProbeLocked() noexcept;  // requires mu_
  void RecordClosed(bool ok, uint64_t word, uint64_t now_us) noexcept;
  void RecordProbe(bool ok, uint64_t now_us) noexcept;
  void Trip(uint64_t seen_word, uint64_t now_us) noexcept;
  void Transition(BreakerState to, uint64_t now_us) noexcept;  // requires mu_
  void RollWindow(uint64_t now_us) noexcept;

  const BreakerConfig config_;
  std::mutex mu_;  // state transitions and probe slots only; never held on the closed path

  alignas(kCacheLineBytes) std::atomic<uint64_t> word_{0};  // S: epoch << 8 | state
  std::atomic<uint64_t> open_until_us_{0};                  // D
  std::atomic<uint32_t> probes_in_flight_{0};               // P
  alignas(kCacheLineBytes) std::atomic<uint32_t> consecutive_{0};  // C
  std::atomic<uint64_t> window_counts_{0};                  // W: requests << 32 | failures
  std::atomic<uint64_t> window_start_us_{0};                // W
  struct alignas(kCacheLineBytes) {                         // K
    std::atomic<uint64_t> opened{0}, reopened{0}, recovered{0}, rejected{0};
    std::atomic<uint64_t> probes{0}, probe_successes{0}, probe_failures{0};
  } k_;
};

}  // namespace inferline
