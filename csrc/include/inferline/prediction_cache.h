// inferline/prediction_cache.h — answers a repeated input without running the model.
//
// What: an LRU map from (model name, version, the request's inputs) to the
// outputs the model gave for them, bounded in bytes. A key covers, for every
// input in order, its dtype, its shape and its bytes, so the same bytes under
// another shape or dtype are another key. Model versions are immutable and
// deterministic (DESIGN.md), so an entry stays right until its version is
// unloaded; call Invalidate(model, version) then.
//
// Correctness under digest collisions: a key is encoded to one canonical,
// length-prefixed byte string (injective: two different keys never encode
// alike). The index is keyed by a 128-bit digest of that string, and a lookup
// compares the FULL stored key bytes of every entry with a matching digest, so a
// collision (even a digest function that maps everything to one value, as the
// tests inject) only costs time, never returns another input's answer.
//
// Memory: each entry is charged EntryBytes() = encoded key + outputs (names,
// shapes, data) + kEntryOverheadBytes for the bookkeeping. An entry whose charge
// exceeds max_bytes is not stored; otherwise least recently used entries are
// evicted until the total is within max_bytes. Outputs are deep-copied on
// Insert (so a cached slice never pins a whole batch's buffer) and copied again
// on a hit (a caller may write into its answer without corrupting the cache).
//
// Thread-safety: every method is safe from any number of threads at once. One
// mutex guards the LRU list, the index and the stats; encoding, digesting and
// copying outputs happen outside it, so the critical section is a hash probe,
// the full key comparison and a list splice. Not sharded on purpose: shards
// would split the byte budget (an entry larger than one shard's share could
// never be stored) and make LRU order per shard; shard when a profile shows
// contention on mu_. The digest function is called concurrently, without the
// lock, and must be thread-safe. Evicted entries are freed after the lock is
// released. Stats are exact (taken under the lock): hits + misses == lookups.
//
// Approximations: Invalidate scans every entry (O(entries) under the lock; it
// runs once per version unload, off the request path). An Insert racing with
// Invalidate of the same version may land after it (the caller should stop
// inserting for a version before invalidating it). Allocation failure throws
// std::bad_alloc, as elsewhere in the core.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "inferline/backend.h"
#include "inferline/tensor.h"

namespace inferline {

struct Digest128 {
  uint64_t lo = 0;
  uint64_t hi = 0;
  bool operator==(const Digest128&) const = default;
};

// MurmurHash3 x64_128 (Austin Appleby's public-domain algorithm, seed 0),
// implemented here; not cryptographic, which is fine because matches are
// always confirmed byte for byte.
Digest128 DefaultDigest(std::string_view bytes) noexcept;
using DigestFn = std::function<Digest128(std::string_view)>;

// Non-owning: everything must stay valid for the duration of the call only.
struct CacheKey {
  std::string_view model;
  int64_t version = 0;
  std::span<const TensorView> inputs;  // e.g. InferRequest::inputs, in config order
};

struct CacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;        // includes lookups of invalid keys; hits + misses == lookups
  uint64_t insertions = 0;    // entries stored (a re-insert of a stored key replaces it and counts)
  uint64_t evictions = 0;     // entries dropped for the byte budget
  uint64_t invalidated = 0;   // entries dropped by Invalidate
  uint64_t too_large = 0;     // Inserts refused: the entry alone exceeds max_bytes
  uint64_t invalid = 0;       // Inserts refused: a negative dim or null data with bytes
  uint64_t bytes = 0;         // charged bytes now (<= max_bytes)
  uint64_t entries = 0;       // entries now
};

class PredictionCache {
 public:
  // Bookkeeping charged per entry on top of its key and outputs (list node,
  // index node, vectors; an estimate, so that tiny entries are bounded too).
  static constexpr size_t kEntryOverheadBytes = 128;

  // max_bytes = 0 stores nothing (every Insert is too large). `digest` must not be empty.
  explicit PredictionCache(size_t max_bytes, DigestFn digest = DefaultDigest);
  PredictionCache(const PredictionCache&) = delete;
  PredictionCache& operator=(const PredictionCache&) = delete;

  // On a hit: replaces *out with copies of the stored outputs, marks the entry
  // most recently used and returns true. On a miss: leaves *out untouched.
  bool Lookup(const CacheKey& key, std::vector<NamedTensor>* out);
  // Stores a copy of `outputs` under `key` (replacing an entry with the same
  // key), then evicts least recently used entries until within max_bytes.
  void Insert(const CacheKey& key, const std::vector<NamedTensor>& outputs);
  // Drops every entry of (model, version).
  void Invalidate(std::string_view model, int64_t version);
  CacheStats stats() const;

  size_t max_bytes() const noexcept { return max_bytes_; }
  // What an entry for (key, outputs) is charged; 0 if the key or an output is invalid.
  static size_t EntryBytes(const CacheKey& key, const std::vector<NamedTensor>& outputs);

 private:
  using Outputs = std::vector<NamedTensor>;
  struct Entry {
    Digest128 digest;
    std::string key;  // the canonical encoding; starts with the encoding of (model, version)
    std::shared_ptr<const Outputs> outputs;
    size_t bytes = 0;
  };
  using List = std::list<Entry>;
  struct DigestHash {
    size_t operator()(const Digest128& d) const noexcept { return static_cast<size_t>(d.lo ^ (d.hi >> 1)); }
  };

  List::iterator FindLocked(const Digest128& digest, std::string_view key);  // requires mu_
  void UnindexLocked(List::iterator it);                                      // requires mu_
  // Moves entries from the back into `dropped` until bytes_ <= max_bytes_; requires mu_.
  void EvictLocked(List* dropped);

  const size_t max_bytes_;
  const DigestFn digest_;
  mutable std::mutex mu_;
  List lru_;  // requires mu_; front = most recently used
  std::unordered_multimap<Digest128, List::iterator, DigestHash> index_;  // requires mu_
  CacheStats stats_;                                                       // requires mu_
};

}  // namespace inferline
