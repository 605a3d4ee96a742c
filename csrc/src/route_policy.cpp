#include "inferline/route_policy.h"

#include <algorithm>
#include <limits>

#include "hash_mix.h"

namespace inferline {
namespace {

constexpr uint64_t kPrime1 = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ULL;

using hash_mix::Fmix;
using hash_mix::LoadLittleEndian;
using hash_mix::Rotl;

uint64_t Absorb(uint64_t h, uint64_t word) noexcept {
  h ^= Fmix(word * kPrime2 + kPrime1);
  return Rotl(h, 27) * kPrime1 + kPrime3;
}

uint64_t HashValue(uint64_t h, uint64_t v) noexcept {
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(v >> (8 * i));
  return StableHash64(std::string_view(reinterpret_cast<const char*>(bytes), 8), h);
}

}  // namespace

uint64_t StableHash64(std::string_view bytes, uint64_t seed) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  uint64_t h = seed + kPrime3 + static_cast<uint64_t>(n) * kPrime1;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) h = Absorb(h, LoadLittleEndian(p + i, 8));
  const size_t rest = n - i;
  if (rest > 0) h = Absorb(h, LoadLittleEndian(p + i, rest) ^ (static_cast<uint64_t>(rest) << 56));
  return Fmix(h);
}

uint64_t HashRoutingKey(std::string_view routing_key) noexcept {
  return StableHash64(routing_key, /*seed=*/0x6B65790000000001ULL);  // a seed of its own: "key" domain
}

uint64_t HashInputs(const std::vector<TensorView>& inputs) noexcept {
  uint64_t h = 0x696E707574730001ULL;  // "inputs" domain
  for (const TensorView& v : inputs) {
    h = HashValue(h, static_cast<uint64_t>(v.dtype));
    h = HashValue(h, static_cast<uint64_t>(v.shape.rank));
    for (int d = 0; d < v.shape.rank; ++d) h = HashValue(h, static_cast<uint64_t>(v.shape.dims[d]));
    const bool sized = std::all_of(v.shape.dims, v.shape.dims + v.shape.rank, [](int64_t d) { return d >= 0; });
    if (sized && v.data != nullptr) {
      h = StableHash64(std::string_view(static_cast<const char*>(v.data), v.ByteSize()), h);
    }
  }
  return h;
}

uint32_t RouteBucket(uint64_t hash) noexcept {
  // Multiply-high maps [0, 2^64) onto [0, kRouteBuckets) without the bias of a modulo.
  return static_cast<uint32_t>((static_cast<unsigned __int128>(hash) * kRouteBuckets) >> 64);
}

const char* FallbackReasonName(FallbackReason reason) noexcept {
  switch (reason) {
    case FallbackReason::kNone: return "none";
    case FallbackReason::kError: return "error";
    case FallbackReason::kDeadline: return "deadline";
    case FallbackReason::kOverload: return "overload";
    case FallbackReason::kBreakerOpen: return "breaker_open";
    case FallbackReason::kUnavailable: return "unavailable";
  }
  return "none";
}

Status RoutePolicy::Validate() const {
  if (arms.empty()) return InvalidArgument("route policy: no arms");
  uint32_t next = 0;
  for (size_t i = 0; i < arms.size(); ++i) {
    const RouteArm& a = arms[i];
    const std::string where = "route policy arm " + std::to_string(i);
    if (a.version < 1) return InvalidArgument(where + ": version " + std::to_string(a.version) + " (must be >= 1)");
    if (a.lo != next) {
      return InvalidArgument(where + ": starts at bucket " + std::to_string(a.lo) + ", expected " +
                             std::to_string(next) + " (arms must be ordered, contiguous and not overlap)");
    }
    if (a.hi <= a.lo || a.hi > kRouteBuckets) {
      return InvalidArgument(where + ": buckets [" + std::to_string(a.lo) + ", " + std::to_string(a.hi) +
                             ") are empty or beyond " + std::to_string(kRouteBuckets));
    }
    next = a.hi;
  }
  if (next != kRouteBuckets) {
    return InvalidArgument("route policy: arms cover buckets [0, " + std::to_string(next) + "), not all " +
                           std::to_string(kRouteBuckets));
  }
  for (size_t i = 0; i < fallback.size(); ++i) {
    const std::string where = "route policy fallback " + std::to_string(i);
    if (fallback[i].model.empty()) return InvalidArgument(where + ": empty model name");
    if (fallback[i].version < 0) return InvalidArgument(where + ": version must be >= 0 (0 = live)");
  }
  return Status::Ok();
}

RoutePolicy SingleVersionPolicy(int64_t version, uint64_t epoch) {
  RoutePolicy p;
  p.epoch = epoch;
  p.arms.push_back(RouteArm{version, 0, kRouteBuckets});
  return p;
}

const RouteArm* PickArm(const RoutePolicy& policy, uint32_t bucket) noexcept {
  // The first arm whose end lies beyond the bucket; it owns the bucket if it starts at or before it.
  auto it = std::upper_bound(policy.arms.begin(), policy.arms.end(), bucket,
                             [](uint32_t b, const RouteArm& a) { return b < a.hi; });
  if (it == policy.arms.end() || it->lo > bucket) return nullptr;
  return &*it;
}

FallbackReason FallbackFor(StatusCode primary) noexcept {
  switch (primary) {
    case StatusCode::kResourceExhausted: return FallbackReason::kOverload;
    case StatusCode::kDeadlineExceeded: return FallbackReason::kDeadline;
    case StatusCode::kUnavailable:
    case StatusCode::kNotFound: return FallbackReason::kUnavailable;
    case StatusCode::kInternal:
    case StatusCode::kUnknown: return FallbackReason::kError;
    default: return FallbackReason::kNone;
  }
}

bool WouldMissDeadline(uint64_t now_us, uint64_t deadline_us, uint64_t predicted_wait_us,
                       uint64_t predicted_compute_us) noexcept {
  if (deadline_us == 0) return false;
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  uint64_t done = now_us;
  done = predicted_wait_us > kMax - done ? kMax : done + predicted_wait_us;
  done = predicted_compute_us > kMax - done ? kMax : done + predicted_compute_us;
  return done > deadline_us;
}

}  // namespace inferline
