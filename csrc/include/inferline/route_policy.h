// inferline/route_policy.h — which version answers a request, as data and pure functions.
//
// What: the per-request routing mechanism's decisions, kept free of threads and
// clocks so each can be tested from a table (like DecideBatch):
//  - StableHash64 / HashRoutingKey / HashInputs: the routing key of a request —
//    its `routing_key` parameter, else its input tensors (dtype, shape, bytes) —
//    hashed the same way on every machine, process and build, so every replica
//    and worker sends the same request to the same version.
//  - RoutePolicy: an immutable snapshot a controller publishes (arms owning
//    ranges of kRouteBuckets hash buckets, a fallback chain, an epoch); PickArm
//    maps a bucket to its arm.
//  - FallbackFor / WouldMissDeadline: why a request the primary cannot answer
//    goes to a fallback instead (FallbackReason, an enum; never a string on the
//    hot path), and when a deadline is already out of the primary's reach.
//
// Thread safety: every function is pure and reentrant; a RoutePolicy is
// immutable once published (share it as std::shared_ptr<const RoutePolicy>).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "inferline/status.h"
#include "inferline/tensor.h"

namespace inferline {

// Hash buckets per model: an arm owning [lo, hi) takes (hi - lo) / 100 percent of the traffic.
inline constexpr uint32_t kRouteBuckets = 10'000;

// A 64-bit hash of `bytes` that never changes: fixed constants, bytes read as
// little-endian words whatever the host, no per-process seed. Not a
// cryptographic hash (routing needs spread and stability, not secrecy).
uint64_t StableHash64(std::string_view bytes, uint64_t seed = 0) noexcept;

// The routing key given by the caller (any bytes, any length).
uint64_t HashRoutingKey(std::string_view routing_key) noexcept;

// The routing key of a request without one: its inputs in order, each as
// (dtype, rank, dims, data bytes), so equal inputs always share a key and
// the same bytes under another dtype or shape do not.
uint64_t HashInputs(const std::vector<TensorView>& inputs) noexcept;

// The bucket of a hash, uniform over [0, kRouteBuckets).
uint32_t RouteBucket(uint64_t hash) noexcept;

// Why a fallback answered. kNone: the primary answered, or the caller gets
// the primary's error (bad input is the caller's fault, never a fallback's).
enum class FallbackReason : uint8_t { kNone, kError, kDeadline, kOverload, kBreakerOpen, kUnavailable };

// "none", "error", "deadline", "overload", "breaker_open", "unavailable".
const char* FallbackReasonName(FallbackReason reason) noexcept;

struct RouteArm {
  int64_t version = 0;  // the model version this arm sends to
  uint32_t lo = 0;      // first bucket it owns
  uint32_t hi = 0;      // one past its last bucket
};

struct FallbackLink {
  std::string model;
  int64_t version = 0;  // 0: that model's live version
};

struct RoutePolicy {
  uint64_t epoch = 0;                  // bumps on every change; echoed with the answers
  std::vector<RouteArm> arms;          // in bucket order, covering [0, kRouteBuckets) exactly
  std::vector<FallbackLink> fallback;  // tried in order when the primary cannot answer

  // INVALID_ARGUMENT naming the arm or link at fault: arms must be non-empty,
  // ordered, contiguous, non-overlapping and cover every bucket; versions >= 1
  // (links: >= 0); link models non-empty.
  Status Validate() const;
};

// A policy with one arm sending every bucket to `version`.
RoutePolicy SingleVersionPolicy(int64_t version, uint64_t epoch = 0);

// The arm owning `bucket`, or nullptr when none does (only for a policy that
// fails Validate). O(log arms).
const RouteArm* PickArm(const RoutePolicy& policy, uint32_t bucket) noexcept;

// The reason a primary's status sends a request to the fallback:
//   RESOURCE_EXHAUSTED (queue full) -> kOverload; DEADLINE_EXCEEDED -> kDeadline;
//   UNAVAILABLE, NOT_FOUND (not loaded, failed to load, shut down) -> kUnavailable;
//   INTERNAL, UNKNOWN (backend failure) -> kError;
//   OK, INVALID_ARGUMENT, CANCELLED and the rest -> kNone (the caller gets the status).
FallbackReason FallbackFor(StatusCode primary) noexcept;

// Whether a request admitted now could no longer meet its deadline on the
// primary: now + predicted queue wait + predicted compute > deadline. A
// deadline of 0 means none (never missed). Saturates instead of overflowing.
bool WouldMissDeadline(uint64_t now_us, uint64_t deadline_us, uint64_t predicted_wait_us,
                       uint64_t predicted_compute_us) noexcept;

}  // namespace inferline
