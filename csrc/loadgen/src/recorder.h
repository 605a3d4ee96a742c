// Private to inferline_grpc_load: the run's clock and window, and the sharded recorder that the
// gRPC callback threads write answers into (python/inferline/loadgen/worker.py's Recorder).
//
// Shards: a call slot or stream records into shard (its index % kShards), each behind its own
// mutex, so callbacks running at once on gRPC's threads rarely meet. Latency buckets are a
// dense array per shard (no allocation per answer); the per-interval series and the error counts
// are maps that only grow when a new bucket, interval or status appears.
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "inferline/grpc_load.h"

namespace inferline::loadgen {

inline int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct RunWindow {
  int64_t start_ns = 0;
  int64_t measure_from_ns = 0;
  int64_t measure_to_ns = 0;          // also the end of sending
  int64_t interval_ns = 1;
};

// Log buckets of python/inferline/loadgen/histogram.py: the same double operations, so the
// same index for the same value.
class Buckets {
 public:
  explicit Buckets(double precision) : inv_log_(1.0 / std::log1p(precision)) {
    size_ = static_cast<size_t>(std::log(1e10) * inv_log_) + 2;  // up to ~3 hours in us
  }
  int32_t Index(double us) const { return us > 1.0 ? static_cast<int32_t>(std::log(us) * inv_log_) : 0; }
  size_t size() const { return size_; }

 private:
  double inv_log_;
  size_t size_;
};

struct Moments {
  uint64_t count = 0;
  double total = 0, min = INFINITY, max = 0;
  void Add(double us) {
    ++count;
    total += us;
    if (us > max) max = us;
    if (us < min) min = us;
  }
};

struct SparseHistogram {
  std::unordered_map<int32_t, uint64_t> counts;
  Moments m;
};

// Outcome of one answer: status is "OK", a status name or "STREAM: ..." (never empty).
struct Answer {
  std::string_view status;
  bool fallback = false;
};

class Recorder {
 public:
  static constexpr unsigned kShards = 8;

  Recorder(const RunWindow& window, double precision);

  // Any thread. scheduled_ns: the request's scheduled (open) or send (closed) time.
  void Record(unsigned shard, int64_t scheduled_ns, int64_t now_ns, const Answer& answer);
  // The scheduler thread only (open loop).
  void RecordLag(int64_t scheduled_ns, int64_t now_ns);
  void CountSent() { sent_.fetch_add(1, std::memory_order_relaxed); }

  GrpcLoadProgress Progress() const {
    return {answered_.load(std::memory_order_relaxed), errors_.load(std::memory_order_relaxed)};
  }
  // After every callback has run.
  GrpcLoadResult Result(double duration_s) const;

 private:
  struct alignas(64) Shard {
    std::mutex mu;
    std::vector<uint64_t> dense;      // requires mu
    Moments latency;                  // requires mu
    std::map<int64_t, SparseHistogram> series;            // requires mu
    std::map<std::string, uint64_t, std::less<>> errors;  // requires mu
    uint64_t ok = 0, fallback = 0;    // requires mu
  };

  RunWindow window_;
  Buckets buckets_;
  Shard shards_[kShards];
  std::vector<uint64_t> lag_dense_;   // scheduler thread only
  Moments lag_;
  std::atomic<uint64_t> sent_{0}, answered_{0}, errors_{0};
};

// The gRPC status code's name as Python's grpc.StatusCode has it ("NOT_FOUND").
std::string_view StatusName(int code);

}  // namespace inferline::loadgen
