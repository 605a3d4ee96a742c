// Tests for inferline/mpmc_queue.h: single-thread semantics against a model,
// element lifetimes, move-only elements, and multi-thread exactly-once delivery.
#include "inferline/mpmc_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define INFERLINE_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define INFERLINE_TEST_TSAN 1
#endif
#endif

namespace inferline {
namespace {

// ThreadSanitizer runs ~10-20x slower; scale the stress item counts down under it.
#if defined(INFERLINE_TEST_TSAN)
constexpr size_t kStressItems = 50'000;
#else
constexpr size_t kStressItems = 200'000;
#endif

// ---- API shape ----------------------------------------------------------------

static_assert(!std::is_copy_constructible_v<MpmcQueue<int>>);
static_assert(!std::is_copy_assignable_v<MpmcQueue<int>>);
static_assert(alignof(MpmcQueue<int>) == MpmcQueue<int>::kCacheLineBytes);
static_assert(noexcept(std::declval<MpmcQueue<int>&>().try_push(1)));
static_assert(noexcept(std::declval<MpmcQueue<int>&>().try_push(std::declval<const int&>())));
static_assert(noexcept(std::declval<MpmcQueue<int>&>().try_pop(std::declval<int&>())));
static_assert(noexcept(std::declval<const MpmcQueue<int>&>().size()));
static_assert(noexcept(std::declval<const MpmcQueue<int>&>().capacity()));

TEST(MpmcQueue, ZeroCapacityThrows) {
  EXPECT_THROW(MpmcQueue<int>(0), std::invalid_argument);
}

TEST(MpmcQueue, SingleThreadFifo) {
  MpmcQueue<int> q(8);
  EXPECT_EQ(q.capacity(), 8u);
  EXPECT_EQ(q.size(), 0u);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(q.try_push(i * 10));
    EXPECT_EQ(q.size(), static_cast<size_t>(i + 1));
  }
  const int lvalue = 99;
  ASSERT_TRUE(q.try_push(lvalue));
  for (int i = 0; i < 5; ++i) {
    int out = -1;
    ASSERT_TRUE(q.try_pop(out));
    EXPECT_EQ(out, i * 10);
  }
  int out = -1;
  ASSERT_TRUE(q.try_pop(out));
  EXPECT_EQ(out, 99);
  EXPECT_EQ(q.size(), 0u);
}

TEST(MpmcQueue, FullRejectsAndEmptyFails) {
  for (size_t cap : {5u, 8u}) {  // modulo and mask index paths
    MpmcQueue<int> q(cap);
    int out = 7;
    EXPECT_FALSE(q.try_pop(out));
    EXPECT_EQ(out, 7);  // untouched on failure
    for (size_t i = 0; i < cap; ++i) ASSERT_TRUE(q.try_push(static_cast<int>(i)));
    EXPECT_EQ(q.size(), cap);
    for (int attempt = 0; attempt < 3; ++attempt) EXPECT_FALSE(q.try_push(-1));
    EXPECT_EQ(q.size(), cap);
    EXPECT_EQ(q.capacity(), cap);  // never grows
    // One pop frees exactly one slot.
    ASSERT_TRUE(q.try_pop(out));
    EXPECT_EQ(out, 0);
    EXPECT_TRUE(q.try_push(100));
    EXPECT_FALSE(q.try_push(101));
    for (size_t i = 1; i < cap; ++i) {
      ASSERT_TRUE(q.try_pop(out));
      EXPECT_EQ(out, static_cast<int>(i));
    }
    ASSERT_TRUE(q.try_pop(out));
    EXPECT_EQ(out, 100);
    EXPECT_FALSE(q.try_pop(out));
    EXPECT_EQ(q.size(), 0u);
  }
}

TEST(MpmcQueue, CapacityOne) {
  MpmcQueue<int> q(1);
  int out = 0;
  EXPECT_FALSE(q.try_pop(out));
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(q.try_push(i));
    EXPECT_FALSE(q.try_push(-1));
    EXPECT_EQ(q.size(), 1u);
    ASSERT_TRUE(q.try_pop(out));
    EXPECT_EQ(out, i);
    EXPECT_FALSE(q.try_pop(out));
    EXPECT_EQ(q.size(), 0u);
  }
}

TEST(MpmcQueue, WrapsAroundManyLaps) {
  // Fixed pattern: keep the ring 3/4 full so head and tail stay out of phase.
  MpmcQueue<uint64_t> q(4);
  uint64_t next_in = 0, next_out = 0;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(q.try_push(next_in++));
  for (int lap = 0; lap < 20'000; ++lap) {
    ASSERT_TRUE(q.try_push(next_in++));
    EXPECT_FALSE(q.try_push(~0ull));
    uint64_t out = 0;
    ASSERT_TRUE(q.try_pop(out));
    ASSERT_EQ(out, next_out++);
  }
  EXPECT_EQ(q.size(), 3u);
}

TEST(MpmcQueue, MatchesDequeModelUnderRandomOps) {
  std::mt19937_64 rng(0x5eed);
  for (size_t cap : {1u, 2u, 3u, 7u, 8u, 100u}) {
    MpmcQueue<uint64_t> q(cap);
    std::deque<uint64_t> model;
    for (int op = 0; op < 50'000; ++op) {
      if (rng() % 2 == 0) {
        const uint64_t v = rng();
        const bool pushed = q.try_push(v);
        ASSERT_EQ(pushed, model.size() < cap);
        if (pushed) model.push_back(v);
      } else {
        uint64_t out = 0;
        const bool popped = q.try_pop(out);
        ASSERT_EQ(popped, !model.empty());
        if (popped) {
          ASSERT_EQ(out, model.front());
          model.pop_front();
        }
      }
      ASSERT_EQ(q.size(), model.size());
    }
  }
}

// ---- Lifetimes ----------------------------------------------------------------

// Counts every construction and destruction; a canary catches double destroys.
struct Tracked {
  static inline std::atomic<int64_t> constructed{0};
  static inline std::atomic<int64_t> destroyed{0};
  static inline std::atomic<int64_t> moves{0};
  static inline std::atomic<int64_t> copies{0};
  static inline std::atomic<int64_t> bad_destroys{0};
  static constexpr uint64_t kAlive = 0xA11CE5A11CE5ull;
  static constexpr uint64_t kDead = 0xDEADDEADDEADull;

  static void Reset() {
    constructed = 0;
    destroyed = 0;
    moves = 0;
    copies = 0;
    bad_destroys = 0;
  }
  static int64_t Live() { return constructed.load() - destroyed.load(); }

  Tracked() noexcept : Tracked(0) {}
  explicit Tracked(int64_t v) noexcept : value(v) { constructed.fetch_add(1); }
  Tracked(const Tracked& o) noexcept : value(o.value) {
    constructed.fetch_add(1);
    copies.fetch_add(1);
  }
  Tracked(Tracked&& o) noexcept : value(o.value) {
    o.value = -1;
    constructed.fetch_add(1);
    moves.fetch_add(1);
  }
  Tracked& operator=(const Tracked& o) noexcept {
    value = o.value;
    copies.fetch_add(1);
    return *this;
  }
  Tracked& operator=(Tracked&& o) noexcept {
    value = o.value;
    o.value = -1;
    moves.fetch_add(1);
    return *this;
  }
  ~Tracked() {
    // volatile: the canary store must survive GCC's dead-store elimination.
    if (magic != kAlive) bad_destroys.fetch_add(1);
    magic = kDead;
    destroyed.fetch_add(1);
  }

  volatile uint64_t magic = kAlive;
  int64_t value;
};

class MpmcQueueLifetime : public ::testing::Test {
 protected:
  void SetUp() override { Tracked::Reset(); }
  void TearDown() override {
    EXPECT_EQ(Tracked::Live(), 0) << "leaked or over-destroyed elements";
    EXPECT_EQ(Tracked::bad_destroys.load(), 0) << "double destroy";
  }
};

TEST_F(MpmcQueueLifetime, PushPopBalances) {
  {
    MpmcQueue<Tracked> q(4);
    EXPECT_EQ(Tracked::constructed.load(), 0) << "slots must be raw storage";
    Tracked a(1);
    ASSERT_TRUE(q.try_push(a));             // copy
    ASSERT_TRUE(q.try_push(Tracked(2)));    // move
    EXPECT_EQ(Tracked::copies.load(), 1);
    EXPECT_EQ(Tracked::Live(), 3);          // a + two queued
    Tracked out;
    ASSERT_TRUE(q.try_pop(out));
    EXPECT_EQ(out.value, 1);
    ASSERT_TRUE(q.try_pop(out));
    EXPECT_EQ(out.value, 2);
    EXPECT_EQ(Tracked::Live(), 2);          // a + out: popped slots were destroyed
    EXPECT_FALSE(q.try_pop(out));
    EXPECT_EQ(out.value, 2);
  }
}

TEST_F(MpmcQueueLifetime, DestructorDestroysRemainingItems) {
  {
    MpmcQueue<Tracked> q(5);
    // Advance tickets first so the remaining items straddle the ring's end.
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(q.try_push(Tracked(i)));
      Tracked out;
      ASSERT_TRUE(q.try_pop(out));
    }
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(q.try_push(Tracked(10 + i)));
    EXPECT_EQ(Tracked::Live(), 3);
  }
  EXPECT_EQ(Tracked::Live(), 0);
}

TEST_F(MpmcQueueLifetime, FullQueueDoesNotConsumeArgument) {
  MpmcQueue<Tracked> q(1);
  ASSERT_TRUE(q.try_push(Tracked(1)));
  Tracked extra(2);
  const int64_t moves_before = Tracked::moves.load();
  EXPECT_FALSE(q.try_push(std::move(extra)));
  EXPECT_EQ(extra.value, 2);
  EXPECT_EQ(Tracked::moves.load(), moves_before);
}

TEST(MpmcQueue, MoveOnlyUniquePtr) {
  MpmcQueue<std::unique_ptr<int>> q(3);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(q.try_push(std::make_unique<int>(i)));
  auto rejected = std::make_unique<int>(42);
  EXPECT_FALSE(q.try_push(std::move(rejected)));
  ASSERT_NE(rejected, nullptr);  // not moved from on failure
  std::unique_ptr<int> out;
  ASSERT_TRUE(q.try_pop(out));
  ASSERT_NE(out, nullptr);
  EXPECT_EQ(*out, 0);
  ASSERT_TRUE(q.try_push(std::move(rejected)));
  EXPECT_EQ(rejected, nullptr);
  // Two items stay queued; the destructor must free them (ASan/LSan checks).
}

// ---- Atom template hook -------------------------------------------------------

std::atomic<int64_t> g_counting_atom_ops{0};

// Minimal stand-in for a test scheduler's atomic: forwards and counts.
template <class U>
class CountingAtom {
 public:
  CountingAtom() noexcept = default;
  constexpr CountingAtom(U v) noexcept : a_(v) {}  // NOLINT: mirrors std::atomic
  U load(std::memory_order mo) const noexcept {
    g_counting_atom_ops.fetch_add(1, std::memory_order_relaxed);
    return a_.load(mo);
  }
  void store(U v, std::memory_order mo) noexcept {
    g_counting_atom_ops.fetch_add(1, std::memory_order_relaxed);
    a_.store(v, mo);
  }
  bool compare_exchange_weak(U& expected, U desired, std::memory_order ok,
                             std::memory_order fail) noexcept {
    g_counting_atom_ops.fetch_add(1, std::memory_order_relaxed);
    return a_.compare_exchange_weak(expected, desired, ok, fail);
  }

 private:
  std::atomic<U> a_{};
};

TEST(MpmcQueue, CustomAtomTemplate) {
  MpmcQueue<int, CountingAtom> q(2);
  const int64_t before = g_counting_atom_ops.load();
  ASSERT_TRUE(q.try_push(1));
  ASSERT_TRUE(q.try_push(2));
  EXPECT_FALSE(q.try_push(3));
  int out = 0;
  ASSERT_TRUE(q.try_pop(out));
  EXPECT_EQ(out, 1);
  EXPECT_GT(g_counting_atom_ops.load(), before);
}

// ---- Multi-thread stress ------------------------------------------------------

struct StressCase {
  int producers;
  int consumers;
  size_t capacity;
};

// A broken queue tends to wedge (a ticket goes backwards, a slot never frees):
// workers give up after kStressDeadline so the test fails with a report, and a
// watchdog aborts the binary if one spins inside a try call past the grace.
constexpr auto kStressDeadline = std::chrono::seconds(30);
constexpr auto kWatchdogGrace = std::chrono::seconds(10);

class Watchdog {
 public:
  explicit Watchdog(std::chrono::steady_clock::time_point deadline)
      : thread_([this, deadline] {
          std::unique_lock<std::mutex> lock(mu_);
          if (!cv_.wait_until(lock, deadline, [this] { return done_; })) {
            std::fprintf(stderr, "MpmcQueue stress: a worker is stuck inside the queue\n");
            std::abort();
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;  // guarded by mu_
  std::thread thread_;
};

// Each producer p pushes values p*per + i (i ascending), so every value is
// distinct and encodes its producer. Returns each consumer's popped values.
template <class E, class Make, class Get>
std::vector<std::vector<uint64_t>> RunStress(const StressCase& c, uint64_t per, Make make,
                                             Get get) {
  const uint64_t total = per * static_cast<uint64_t>(c.producers);
  MpmcQueue<E> q(c.capacity);
  std::atomic<bool> go{false};
  std::atomic<bool> aborted{false};
  std::atomic<uint64_t> popped{0};
  const auto deadline = std::chrono::steady_clock::now() + kStressDeadline;
  Watchdog watchdog(deadline + kWatchdogGrace);
  // Called after a failed try: back off, and report whether to give up.
  auto give_up = [&] {
    std::this_thread::yield();
    if (std::chrono::steady_clock::now() > deadline) aborted.store(true);
    return aborted.load(std::memory_order_relaxed);
  };
  std::vector<std::vector<uint64_t>> got(static_cast<size_t>(c.consumers));
  std::vector<std::thread> threads;
  for (int p = 0; p < c.producers; ++p) {
    threads.emplace_back([&, p] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (uint64_t i = 0; i < per; ++i) {
        E item = make(static_cast<uint64_t>(p) * per + i);
        while (!q.try_push(std::move(item))) {
          if (give_up()) return;
        }
      }
    });
  }
  for (int k = 0; k < c.consumers; ++k) {
    threads.emplace_back([&, k] {
      auto& mine = got[static_cast<size_t>(k)];
      mine.reserve(total);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      E out{};
      while (popped.load(std::memory_order_relaxed) < total) {
        if (q.try_pop(out)) {
          mine.push_back(get(out));
          popped.fetch_add(1, std::memory_order_relaxed);
        } else if (give_up()) {
          return;
        }
      }
    });
  }
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  EXPECT_FALSE(aborted.load()) << "stress run passed its deadline: items lost or stuck";
  E leftover{};
  EXPECT_FALSE(q.try_pop(leftover));
  EXPECT_EQ(q.size(), 0u);
  return got;
}

// Exactly-once (bitmap + sum) and per-producer order as seen by each consumer.
void CheckDelivery(const StressCase& c, uint64_t per,
                   const std::vector<std::vector<uint64_t>>& got) {
  const uint64_t total = per * static_cast<uint64_t>(c.producers);
  std::vector<uint8_t> seen(total, 0);
  uint64_t count = 0, sum = 0;
  for (const auto& mine : got) {
    std::vector<int64_t> last(static_cast<size_t>(c.producers), -1);
    for (uint64_t v : mine) {
      ASSERT_LT(v, total);
      ASSERT_EQ(seen[v], 0) << "value " << v << " delivered twice";
      seen[v] = 1;
      ++count;
      sum += v;
      const size_t p = static_cast<size_t>(v / per);
      ASSERT_GT(static_cast<int64_t>(v), last[p]) << "producer " << p << " reordered";
      last[p] = static_cast<int64_t>(v);
    }
  }
  EXPECT_EQ(count, total);
  EXPECT_EQ(sum, total * (total - 1) / 2);
  for (uint64_t v = 0; v < total; ++v) ASSERT_EQ(seen[v], 1) << "value " << v << " lost";
}

class MpmcQueueStress : public ::testing::TestWithParam<StressCase> {};

TEST_P(MpmcQueueStress, EveryItemDeliveredExactlyOnce) {
  const StressCase c = GetParam();
  const uint64_t per = kStressItems / static_cast<uint64_t>(c.producers);
  auto got = RunStress<uint64_t>(c, per, [](uint64_t v) { return v; },
                                 [](uint64_t v) { return v; });
  CheckDelivery(c, per, got);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MpmcQueueStress,
    ::testing::Values(StressCase{4, 4, 64}, StressCase{1, 3, 10}, StressCase{3, 1, 3},
                      StressCase{2, 2, 1}),
    [](const ::testing::TestParamInfo<StressCase>& info) {
      return std::to_string(info.param.producers) + "x" + std::to_string(info.param.consumers) +
             "_cap" + std::to_string(info.param.capacity);
    });

TEST_F(MpmcQueueLifetime, ConcurrentTrackedBalances) {
  const StressCase c{2, 2, 16};
  const uint64_t per = kStressItems / 8;
  auto got = RunStress<Tracked>(
      c, per, [](uint64_t v) { return Tracked(static_cast<int64_t>(v)); },
      [](const Tracked& t) { return static_cast<uint64_t>(t.value); });
  CheckDelivery(c, per, got);
}

TEST(MpmcQueue, ConcurrentUniquePtr) {
  const StressCase c{2, 2, 16};
  const uint64_t per = kStressItems / 8;
  auto got = RunStress<std::unique_ptr<uint64_t>>(
      c, per, [](uint64_t v) { return std::make_unique<uint64_t>(v); },
      [](const std::unique_ptr<uint64_t>& p) { return *p; });
  CheckDelivery(c, per, got);
}

}  // namespace
}  // namespace inferline
