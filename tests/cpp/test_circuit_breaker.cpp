// Tests for inferline/circuit_breaker.h: ShouldTrip and BreakerConfig::Validate as
// tables, the breaker as a table of (time, call) sequences with the expected
// admission and state after each step, and a many-thread fuzz test (run it under
// TSan) that checks the probe limit and the counters' sums.
#include "inferline/circuit_breaker.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace inferline {
namespace {

using S = BreakerState;

BreakerConfig Config(uint32_t consecutive, double rate, uint32_t min_requests, uint64_t window_us,
                     uint64_t open_us = 1000, uint32_t probes = 1) {
  BreakerConfig c;
  c.consecutive_failures = consecutive;
  c.error_rate = rate;
  c.min_requests = min_requests;
  c.window_us = window_us;
  c.open_us = open_us;
  c.half_open_probes = probes;
  return c;
}

// ---- ShouldTrip --------------------------------------------------------------

TEST(BreakerShouldTrip, Table) {
  struct Case {
    const char* name;
    BreakerConfig config;
    BreakerWindow window;
    bool trip;
  };
  const Case cases[] = {
      {"consecutive reached", Config(5, 0, 0, 0), {5, 0, 0}, true},
      {"consecutive one short", Config(5, 0, 0, 0), {4, 0, 0}, false},
      {"consecutive off", Config(0, 0, 0, 0), {1000, 0, 0}, false},
      {"rate above with min", Config(0, 0.5, 4, 100), {0, 4, 3}, true},
      {"rate equal is not above", Config(0, 0.5, 4, 100), {0, 4, 2}, false},
      {"rate above below min", Config(0, 0.5, 4, 100), {0, 3, 3}, false},
      {"min 0 behaves as 1", Config(0, 0.5, 0, 100), {0, 1, 1}, true},
      {"min 0 with nothing counted", Config(0, 0.5, 0, 100), {0, 0, 0}, false},
      {"rate off by error_rate 0", Config(0, 0.0, 1, 100), {0, 10, 10}, false},
      {"rate off by window 0", Config(0, 0.5, 1, 0), {0, 10, 10}, false},
      {"either trigger: rate", Config(10, 0.1, 5, 100), {1, 5, 1}, true},
      {"either trigger: consecutive", Config(2, 0.9, 100, 100), {2, 2, 2}, true},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ShouldTrip(c.config, c.window), c.trip) << c.name;
  }
}

// ---- Validate ----------------------------------------------------------------

TEST(BreakerConfigValidate, Table) {
  struct Case {
    const char* name;
    BreakerConfig config;
    const char* field;  // nullptr = valid
  };
  const Case cases[] = {
      {"defaults", BreakerConfig{}, nullptr},
      {"every trigger off", Config(0, 0.0, 0, 0, 0, 1), nullptr},
      {"rate 0.99", Config(5, 0.99, 1, 1), nullptr},
      {"rate 1 can never fire", Config(5, 1.0, 1, 1), "error_rate"},
      {"negative rate", Config(5, -0.1, 1, 1), "error_rate"},
      {"NaN rate", Config(5, std::nan(""), 1, 1), "error_rate"},
      {"no probes", Config(5, 0.5, 1, 1, 1, 0), "half_open_probes"},
  };
  for (const Case& c : cases) {
    Status st = c.config.Validate("model 'm' version 2");
    if (c.field == nullptr) {
      EXPECT_TRUE(st.ok()) << c.name << ": " << st.ToString();
      continue;
    }
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(st.message().find(c.field), std::string::npos) << c.name << ": " << st.message();
    EXPECT_NE(st.message().find("model 'm' version 2"), std::string::npos) << c.name;
  }
  EXPECT_THROW(CircuitBreaker(Config(5, 2.0, 1, 1)), std::invalid_argument);
}

// ---- sequences ---------------------------------------------------------------

enum class Op { kAllow, kOk, kFail, kProbeOk, kProbeFail, kState };

struct Step {
  uint64_t t_us;
  Op op;
  S state;              // expected state(t_us) after the call
  bool admit = false;   // kAllow only
  bool probe = false;   // kAllow only
};

Step Allow(uint64_t t, S s, bool admit, bool probe = false) { return {t, Op::kAllow, s, admit, probe}; }
Step Ok(uint64_t t, S s) { return {t, Op::kOk, s}; }
Step Fail(uint64_t t, S s) { return {t, Op::kFail, s}; }
Step ProbeOk(uint64_t t, S s) { return {t, Op::kProbeOk, s}; }
Step ProbeFail(uint64_t t, S s) { return {t, Op::kProbeFail, s}; }
Step StateIs(uint64_t t, S s) { return {t, Op::kState, s}; }

// `n` failures at t, t+1, ...; the state after each is `before` except the last, `after`.
std::vector<Step> Fails(uint64_t t, int n, S before, S after) {
  std::vector<Step> v;
  for (int i = 0; i < n; ++i) v.push_back(Fail(t + i, i + 1 == n ? after : before));
  return v;
}

struct Case {
  std::string name;
  BreakerConfig config;
  std::vector<std::vector<Step>> steps;  // concatenated in order
  BreakerCounters want;                  // checked at the end
};

std::vector<Case> Cases() {
  const S C = S::kClosed, O = S::kOpen, H = S::kHalfOpen;
  std::vector<Case> c;
  // Consecutive failures (rate off).
  c.push_back({"5 consecutive failures open", Config(5, 0, 0, 0),
               {Fails(0, 5, C, O), {Allow(10, O, false), Allow(999, O, false)}},
               {.opened = 1, .rejected = 2}});
  c.push_back({"a success resets the run", Config(5, 0, 0, 0),
               {Fails(0, 4, C, C), {Ok(4, C)}, Fails(5, 4, C, C), {Allow(9, C, true)}}, {}});
  c.push_back({"every trigger off never opens", Config(0, 0, 0, 0), {Fails(0, 100, C, C)}, {}});
  // Error rate over the window (consecutive off): 0.5 with min 4.
  c.push_back({"rate equal stays, above opens", Config(0, 0.5, 4, 1000),
               {{Ok(0, C), Fail(1, C), Ok(2, C), Fail(3, C), Fail(4, O)}}, {.opened = 1}});
  c.push_back({"rate waits for min_requests", Config(0, 0.5, 4, 1000), {Fails(0, 4, C, O)}, {.opened = 1}});
  c.push_back({"min_requests 0 opens on the first failure", Config(0, 0.5, 0, 1000), {Fails(0, 1, C, O)},
               {.opened = 1}});
  c.push_back({"error_rate 0 turns the rate off", Config(0, 0.0, 1, 1000), {Fails(0, 50, C, C)}, {}});
  c.push_back({"window 0 turns the rate off", Config(0, 0.5, 1, 0), {Fails(0, 50, C, C)}, {}});
  c.push_back({"window rollover forgets old failures", Config(0, 0.5, 4, 1000),
               {Fails(0, 3, C, C), Fails(1000, 3, C, C), Fails(2000, 3, C, C), {Fail(2003, O)}},
               {.opened = 1}});
  c.push_back({"successes in a new window dilute", Config(0, 0.5, 4, 1000),
               {Fails(0, 3, C, C), {Ok(1000, C), Ok(1001, C), Fail(1002, C), Fail(1003, C), Fail(1004, O)}},
               {.opened = 1}});
  // Half-open.
  c.push_back({"open_us passes: one probe, ok closes", Config(2, 0, 0, 0, 1000),
               {Fails(0, 2, C, O),
                {StateIs(1000, O), StateIs(1001, H), Allow(999, O, false), Allow(1001, H, true, true),
                 Allow(1002, H, false), ProbeOk(1003, C), Allow(1004, C, true)}},
               {.opened = 1, .recovered = 1, .rejected = 2, .probes = 1, .probe_successes = 1}});
  c.push_back({"failed probe re-opens for a new open_us", Config(2, 0, 0, 0, 1000),
               {Fails(0, 2, C, O),
                {Allow(1001, H, true, true), ProbeFail(1500, O), Allow(2499, O, false), Allow(2500, H, true, true),
                 ProbeOk(2600, C)}},
               {.opened = 1, .reopened = 1, .recovered = 1, .rejected = 1, .probes = 2, .probe_successes = 1,
                .probe_failures = 1}});
  c.push_back({"counts reset on recovery", Config(3, 0, 0, 0, 10),
               {Fails(0, 3, C, O), {Allow(12, H, true, true), ProbeOk(13, C)}, Fails(14, 3, C, O)},
               {.opened = 2, .recovered = 1, .probes = 1, .probe_successes = 1}});
  c.push_back({"the window restarts on recovery", Config(0, 0.5, 4, 1000, 10),
               {Fails(0, 4, C, O), {Allow(13, H, true, true), ProbeOk(14, C)}, Fails(15, 4, C, O)},
               {.opened = 2, .recovered = 1, .probes = 1, .probe_successes = 1}});
  c.push_back({"two probes; first ok closes, second counts as normal", Config(2, 0, 0, 0, 100, 2),
               {Fails(0, 2, C, O),
                {Allow(101, H, true, true), Allow(102, H, true, true), Allow(103, H, false), ProbeOk(104, C),
                 ProbeFail(105, C), Fail(106, O)}},
               {.opened = 2, .recovered = 1, .rejected = 1, .probes = 2, .probe_successes = 1, .probe_failures = 1}});
  c.push_back({"a late probe keeps its slot into the next half-open", Config(2, 0, 0, 0, 100, 2),
               {Fails(0, 2, C, O),
                {Allow(101, H, true, true), Allow(102, H, true, true), ProbeFail(103, O), Allow(202, O, false),
                 Allow(203, H, true, true), Allow(204, H, false), ProbeOk(205, C), ProbeOk(206, C)}},
               {.opened = 1, .reopened = 1, .recovered = 1, .rejected = 2, .probes = 3, .probe_successes = 2,
                .probe_failures = 1}});
  c.push_back({"late outcomes of pre-trip requests are ignored", Config(2, 0, 0, 0, 100),
               {Fails(0, 2, C, O), {Fail(3, O), Ok(4, O), Allow(101, H, true, true), Fail(102, H), Ok(103, H),
                                    ProbeOk(104, C)}},
               {.opened = 1, .recovered = 1, .probes = 1, .probe_successes = 1}});
  c.push_back({"open_us 0: the next Allow probes", Config(1, 0, 0, 0, 0),
               {{Fail(5, H), Allow(5, H, true, true), Allow(5, H, false), ProbeFail(6, H), Allow(6, H, true, true)}},
               {.opened = 1, .reopened = 1, .rejected = 1, .probes = 2, .probe_failures = 1}});
  c.push_back({"open_us saturates instead of wrapping", Config(1, 0, 0, 0, UINT64_MAX),
               {{Fail(10, O), Allow(UINT64_MAX - 1, O, false), StateIs(UINT64_MAX, H)}},
               {.opened = 1, .rejected = 1}});
  return c;
}

void Apply(CircuitBreaker& b, const Step& s, const std::string& where) {
  switch (s.op) {
    case Op::kAllow: {
      Admission a = b.Allow(s.t_us);
      EXPECT_EQ(a.admit, s.admit) << where;
      EXPECT_EQ(a.probe, s.probe) << where;
      break;
    }
    case Op::kOk: b.Record(true, false, s.t_us); break;
    case Op::kFail: b.Record(false, false, s.t_us); break;
    case Op::kProbeOk: b.Record(true, true, s.t_us); break;
    case Op::kProbeFail: b.Record(false, true, s.t_us); break;
    case Op::kState: break;
  }
  EXPECT_EQ(b.state(s.t_us), s.state) << where << ": got " << BreakerStateName(b.state(s.t_us));
}

TEST(CircuitBreakerSequence, Table) {
  for (const Case& c : Cases()) {
    CircuitBreaker b(c.config, 0);
    size_t i = 0;
    for (const auto& part : c.steps) {
      for (const Step& s : part) Apply(b, s, c.name + " step " + std::to_string(i++) + " t=" + std::to_string(s.t_us));
    }
    const BreakerCounters k = b.counters();
    EXPECT_EQ(k.opened, c.want.opened) << c.name;
    EXPECT_EQ(k.reopened, c.want.reopened) << c.name;
    EXPECT_EQ(k.recovered, c.want.recovered) << c.name;
    EXPECT_EQ(k.rejected, c.want.rejected) << c.name;
    EXPECT_EQ(k.probes, c.want.probes) << c.name;
    EXPECT_EQ(k.probe_successes, c.want.probe_successes) << c.name;
    EXPECT_EQ(k.probe_failures, c.want.probe_failures) << c.name;
  }
}

TEST(CircuitBreaker, StateNames) {
  EXPECT_STREQ(BreakerStateName(S::kClosed), "closed");
  EXPECT_STREQ(BreakerStateName(S::kOpen), "open");
  EXPECT_STREQ(BreakerStateName(S::kHalfOpen), "half_open");
}

// ---- concurrency ---------------------------------------------------------------

// Threads share a clock that every call advances by 1 us, and fail 60% of the
// time, so the breaker cycles through all states many times. Each thread counts
// what it was told; the test's own probe count is raised after Allow admits a
// probe and lowered before Record releases it, so it can never exceed the
// breaker's and must stay within half_open_probes.
TEST(CircuitBreakerConcurrent, ProbeLimitAndCounterSums) {
  constexpr int kThreads = 4;
  const int iterations = testing::Scaled(200'000, 10);
  const BreakerConfig config = Config(3, 0.5, 10, 500, 50, 2);
  CircuitBreaker b(config, 0);
  std::atomic<uint64_t> clock_us{0};
  std::atomic<uint32_t> probes_now{0};
  std::atomic<uint32_t> max_probes_seen{0};
  std::atomic<uint64_t> rejected{0}, probes{0}, probe_ok{0}, probe_fail{0};

  std::atomic<bool> go{false};
  auto worker = [&](unsigned seed) {
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();  // start together
    std::mt19937 rng(seed);
    uint64_t my_rejected = 0, my_probes = 0, my_ok = 0, my_fail = 0;
    for (int i = 0; i < iterations; ++i) {
      const uint64_t now = clock_us.fetch_add(1, std::memory_order_relaxed);
      const Admission a = b.Allow(now);
      const bool ok = rng() % 10 < 4;
      if (!a.admit) {
        ++my_rejected;
        continue;
      }
      if (a.probe) {
        ++my_probes;
        const uint32_t n = probes_now.fetch_add(1) + 1;
        uint32_t seen = max_probes_seen.load();
        while (n > seen && !max_probes_seen.compare_exchange_weak(seen, n)) {}
        (ok ? my_ok : my_fail) += 1;
        probes_now.fetch_sub(1);
      }
      b.Record(ok, a.probe, clock_us.load(std::memory_order_relaxed));
    }
    rejected += my_rejected;
    probes += my_probes;
    probe_ok += my_ok;
    probe_fail += my_fail;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, 1234u + t);
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();

  const BreakerCounters k = b.counters();
  EXPECT_LE(max_probes_seen.load(), config.half_open_probes);
  EXPECT_EQ(k.rejected, rejected.load());
  EXPECT_EQ(k.probes, probes.load());
  EXPECT_EQ(k.probe_successes, probe_ok.load());
  EXPECT_EQ(k.probe_failures, probe_fail.load());
  EXPECT_EQ(k.probes, k.probe_successes + k.probe_failures);
  // Every trip is either still open or was recovered from.
  const bool closed = b.state(clock_us.load()) == S::kClosed;
  EXPECT_EQ(k.opened, k.recovered + (closed ? 0 : 1));
  // The workload must actually have exercised every transition.
  EXPECT_GT(k.opened, 1u);
  EXPECT_GT(k.reopened, 0u);
  EXPECT_GT(k.recovered, 0u);
  // All probe slots are free again: one more half-open period admits a probe.
  if (!closed) {
    const uint64_t later = clock_us.load() + config.open_us;
    EXPECT_TRUE(b.Allow(later).probe);
  }
}

}  // namespace
}  // namespace inferline
