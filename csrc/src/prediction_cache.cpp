// The rules (key encoding, byte charges, locking) are described in inferline/prediction_cache.h.
#include "inferline/prediction_cache.h"

#include <cstring>
#include <iterator>
#include <stdexcept>
#include <utility>

#include "hash_mix.h"

namespace inferline {

namespace {

// ---- digest --------------------------------------------------------------------

constexpr uint64_t kC1 = 0x87c37b91114253d5ULL;
constexpr uint64_t kC2 = 0x4cf5ad432745937fULL;

using hash_mix::Fmix;
using hash_mix::Rotl;

uint64_t Load64(const unsigned char* p) noexcept { return hash_mix::LoadLittleEndian(p); }

uint64_t MixK1(uint64_t k1) noexcept { return Rotl(k1 * kC1, 31) * kC2; }
uint64_t MixK2(uint64_t k2) noexcept { return Rotl(k2 * kC2, 33) * kC1; }

// ---- key encoding ----------------------------------------------------------------
// Every variable-length field is preceded by its length, so the encoding is
// injective; the (model, version) prefix comes first so Invalidate can match it.

template <class T>
void Put(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof v);
}

void PutPrefix(std::string* s, std::string_view model, int64_t version) {
  Put<uint64_t>(s, model.size());
  s->append(model);
  Put<int64_t>(s, version);
}

bool ValidShape(const Shape& shape) noexcept {
  if (shape.rank < 0 || shape.rank > Shape::kMaxRank) return false;
  for (int i = 0; i < shape.rank; ++i) {
    if (shape.dims[i] < 0) return false;
  }
  return true;
}

bool Valid(const TensorView& v) noexcept { return ValidShape(v.shape) && (v.data != nullptr || v.ByteSize() == 0); }

// Encoded size of one tensor's header and data.
size_t TensorBytes(const TensorView& v) noexcept {
  return sizeof(uint8_t) + sizeof(int32_t) + sizeof(int64_t) * v.shape.rank + sizeof(uint64_t) + v.ByteSize();
}

// 0 if an input is invalid.
size_t EncodedKeyBytes(const CacheKey& key) noexcept {
  size_t n = sizeof(uint64_t) + key.model.size() + sizeof(int64_t) + sizeof(uint64_t);
  for (const TensorView& v : key.inputs) {
    if (!Valid(v)) return 0;
    n += TensorBytes(v);
  }
  return n;
}

// False (and *out unspecified) if an input is invalid.
bool EncodeKey(const CacheKey& key, std::string* out) {
  const size_t n = EncodedKeyBytes(key);
  if (n == 0) return false;
  out->clear();
  out->reserve(n);
  PutPrefix(out, key.model, key.version);
  Put<uint64_t>(out, key.inputs.size());
  for (const TensorView& v : key.inputs) {
    Put<uint8_t>(out, static_cast<uint8_t>(v.dtype));
    Put<int32_t>(out, v.shape.rank);
    for (int i = 0; i < v.shape.rank; ++i) Put<int64_t>(out, v.shape.dims[i]);
    Put<uint64_t>(out, v.ByteSize());
    if (v.ByteSize() > 0) out->append(static_cast<const char*>(v.data), v.ByteSize());
  }
  return true;
}

// 0 if an output is invalid.
size_t OutputsBytes(const std::vector<NamedTensor>& outputs) noexcept {
  size_t n = 0;
  for (const NamedTensor& o : outputs) {
    const TensorView v = o.tensor.View();
    if (!Valid(v)) return 0;
    n += o.name.size() + sizeof(DataType) + sizeof(Shape) + v.ByteSize();
  }
  return n;
}

std::vector<NamedTensor> DeepCopy(const std::vector<NamedTensor>& outputs) {
  std::vector<NamedTensor> copy;
  copy.reserve(outputs.size());
  for (const NamedTensor& o : outputs) {
    Tensor t = Tensor::Allocate(o.tensor.dtype, o.tensor.shape);
    if (t.ByteSize() > 0) std::memcpy(t.data, o.tensor.data, t.ByteSize());
    copy.push_back(NamedTensor{o.name, std::move(t)});
  }
  return copy;
}

}  // namespace

Digest128 DefaultDigest(std::string_view bytes) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  uint64_t h1 = 0, h2 = 0;  // seed 0
  const size_t blocks = n / 16;
  for (size_t i = 0; i < blocks; ++i) {
    h1 ^= MixK1(Load64(p + 16 * i));
    h1 = (Rotl(h1, 27) + h2) * 5 + 0x52dce729;
    h2 ^= MixK2(Load64(p + 16 * i + 8));
    h2 = (Rotl(h2, 31) + h1) * 5 + 0x38495ab5;
  }
  const unsigned char* tail = p + blocks * 16;
  const size_t rem = n % 16;
  uint64_t k1 = 0, k2 = 0;
  for (size_t i = rem; i > 8; --i) k2 ^= uint64_t{tail[i - 1]} << ((i - 9) * 8);
  if (rem > 8) h2 ^= MixK2(k2);
  for (size_t i = rem < 8 ? rem : 8; i > 0; --i) k1 ^= uint64_t{tail[i - 1]} << ((i - 1) * 8);
  if (rem > 0) h1 ^= MixK1(k1);
  h1 ^= n;
  h2 ^= n;
  h1 += h2;
  h2 += h1;
  h1 = Fmix(h1);
  h2 = Fmix(h2);
  h1 += h2;
  h2 += h1;
  return Digest128{h1, h2};
}

PredictionCache::PredictionCache(size_t max_bytes, DigestFn digest)
    : max_bytes_(max_bytes), digest_(std::move(digest)) {
  if (!digest_) throw std::invalid_argument("PredictionCache: the digest function is empty");
}

size_t PredictionCache::EntryBytes(const CacheKey& key, const std::vector<NamedTensor>& outputs) {
  const size_t key_bytes = EncodedKeyBytes(key);
  const size_t output_bytes = OutputsBytes(outputs);
  if (key_bytes == 0 || (output_bytes == 0 && !outputs.empty())) return 0;
  return key_bytes + output_bytes + kEntryOverheadBytes;
}

bool PredictionCache::Lookup(const CacheKey& key, std::vector<NamedTensor>* out) {
  std::string encoded;
  const bool valid = EncodeKey(key, &encoded);
  const Digest128 digest = valid ? digest_(encoded) : Digest128{};
  std::shared_ptr<const Outputs> found;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (valid) {
      auto it = FindLocked(digest, encoded);
      if (it != lru_.end()) {
        lru_.splice(lru_.begin(), lru_, it);  // most recently used
        found = it->outputs;
      }
    }
    ++(found ? stats_.hits : stats_.misses);
  }
  if (!found) return false;
  *out = DeepCopy(*found);  // outside the lock; `found` keeps the entry's outputs alive
  return true;
}

void PredictionCache::Insert(const CacheKey& key, const std::vector<NamedTensor>& outputs) {
  const size_t bytes = EntryBytes(key, outputs);
  if (bytes == 0 || bytes > max_bytes_) {
    std::lock_guard<std::mutex> lock(mu_);
    ++(bytes == 0 ? stats_.invalid : stats_.too_large);
    return;
  }
  List fresh(1);  // built outside the lock, spliced in under it
  Entry& e = fresh.front();
  (void)EncodeKey(key, &e.key);  // valid: EntryBytes checked it
  e.digest = digest_(e.key);
  e.outputs = std::make_shared<const Outputs>(DeepCopy(outputs));
  e.bytes = bytes;

  List dropped;  // declared before the lock: freed after it is released
  std::lock_guard<std::mutex> lock(mu_);
  auto old = FindLocked(e.digest, e.key);
  if (old != lru_.end()) {  // same key: replace
    UnindexLocked(old);
    stats_.bytes -= old->bytes;
    dropped.splice(dropped.end(), lru_, old);
  }
  lru_.splice(lru_.begin(), fresh);
  index_.emplace(lru_.front().digest, lru_.begin());
  stats_.bytes += bytes;
  ++stats_.insertions;
  EvictLocked(&dropped);
  stats_.entries = lru_.size();
}

void PredictionCache::Invalidate(std::string_view model, int64_t version) {
  std::string prefix;
  PutPrefix(&prefix, model, version);
  List dropped;  // freed after the lock is released
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = lru_.begin(); it != lru_.end();) {
    auto next = std::next(it);
    if (std::string_view(it->key).starts_with(prefix)) {
      UnindexLocked(it);
      stats_.bytes -= it->bytes;
      dropped.splice(dropped.end(), lru_, it);
      ++stats_.invalidated;
    }
    it = next;
  }
  stats_.entries = lru_.size();
}

CacheStats PredictionCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

PredictionCache::List::iterator PredictionCache::FindLocked(const Digest128& digest, std::string_view key) {
  auto [first, last] = index_.equal_range(digest);
  for (auto it = first; it != last; ++it) {
    if (it->second->key == key) return it->second;  // the full bytes, never the digest alone
  }
  return lru_.end();
}

void PredictionCache::UnindexLocked(List::iterator entry) {
  auto [first, last] = index_.equal_range(entry->digest);
  for (auto it = first; it != last; ++it) {
    if (it->second == entry) {
      index_.erase(it);
      return;
    }
  }
}

void PredictionCache::EvictLocked(List* dropped) {
  while (stats_.bytes > max_bytes_ && !lru_.empty()) {
    auto victim = std::prev(lru_.end());
    UnindexLocked(victim);
    stats_.bytes -= victim->bytes;
    dropped->splice(dropped->end(), lru_, victim);
    ++stats_.evictions;
  }
}

}  // namespace inferline
