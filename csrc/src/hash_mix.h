// hash_mix.h (private) — the bit-mixing steps shared by the core's hashes: the
// routing hash (route_policy.cpp) and the prediction cache's digest
// (prediction_cache.cpp). Each hash's own constants and layout stay with it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace inferline::hash_mix {

constexpr uint64_t Rotl(uint64_t x, int r) noexcept { return (x << r) | (x >> (64 - r)); }

// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
constexpr uint64_t Fmix(uint64_t x) noexcept {
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDULL;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ULL;
  x ^= x >> 33;
  return x;
}

// Up to 8 bytes as a little-endian word, whatever the host's byte order.
inline uint64_t LoadLittleEndian(const unsigned char* p, size_t n = 8) noexcept {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace inferline::hash_mix
