// Tests for inferline/prediction_cache.h: hits and misses (a table of key
// variants that must each miss), copies in and out, LRU order under the byte
// budget, invalidation by version, stats sums, FORCED digest collisions (every
// key maps to one digest: answers must never cross), DefaultDigest, and a
// many-thread test for TSan.
#include "inferline/prediction_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_util.h"

namespace inferline {
namespace {

// One input: owns its bytes and exposes them as a TensorView.
struct Input {
  std::vector<uint8_t> bytes;
  DataType dtype = DataType::kFloat32;
  Shape shape;
  TensorView View() const { return TensorView{bytes.data(), dtype, shape}; }
};

Input Floats(std::vector<float> v, Shape shape) {
  Input in;
  in.bytes.resize(v.size() * sizeof(float));
  std::memcpy(in.bytes.data(), v.data(), in.bytes.size());
  in.dtype = DataType::kFloat32;
  in.shape = shape;
  return in;
}

// A key's views, kept alive together with the CacheKey pointing at them.
struct Key {
  std::string model;
  int64_t version;
  std::vector<TensorView> views;
  CacheKey key() const { return CacheKey{model, version, views}; }
};

// The views point into `inputs`, which must outlive the Key (references, so a
// temporary Input does not compile).
Key MakeKey(std::string model, int64_t version, std::vector<std::reference_wrapper<const Input>> inputs) {
  Key k{std::move(model), version, {}};
  for (const Input& in : inputs) k.views.push_back(in.View());
  return k;
}

// One output "y" of shape [1, n] holding `value` n times.
std::vector<NamedTensor> Out(float value, int64_t n = 4) {
  Tensor t = Tensor::Allocate(DataType::kFloat32, Shape{1, n});
  for (int64_t i = 0; i < n; ++i) static_cast<float*>(t.data)[i] = value;
  return {NamedTensor{"y", t}};
}

float ValueOf(const std::vector<NamedTensor>& out) { return static_cast<const float*>(out.at(0).tensor.data)[0]; }

bool Hit(PredictionCache& c, const Key& k, float* value = nullptr) {
  std::vector<NamedTensor> out;
  if (!c.Lookup(k.key(), &out)) return false;
  if (value != nullptr) *value = ValueOf(out);
  return true;
}

TEST(PredictionCache, HitReturnsTheOutputsAndMissLeavesOutAlone) {
  PredictionCache c(1 << 20);
  const Input x = Floats({1, 2, 3, 4}, Shape{1, 4});
  const Key k = MakeKey("m", 1, {x});
  std::vector<NamedTensor> out = Out(-1);
  EXPECT_FALSE(c.Lookup(k.key(), &out));
  EXPECT_EQ(ValueOf(out), -1.0f);  // untouched
  c.Insert(k.key(), Out(7));
  ASSERT_TRUE(c.Lookup(k.key(), &out));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].name, "y");
  EXPECT_EQ(out[0].tensor.shape, (Shape{1, 4}));
  EXPECT_EQ(out[0].tensor.dtype, DataType::kFloat32);
  EXPECT_EQ(ValueOf(out), 7.0f);
}

TEST(PredictionCache, EveryKeyVariantMisses) {
  PredictionCache c(1 << 20);
  const Input x = Floats({1, 2, 3, 4}, Shape{1, 4});
  const Input y = Floats({5, 6}, Shape{1, 2});
  c.Insert(MakeKey("m", 1, {x, y}).key(), Out(1));
  ASSERT_TRUE(Hit(c, MakeKey("m", 1, {x, y})));

  auto reshaped = [&](Shape s) { Input v = x; v.shape = s; return v; };
  auto retyped = [&](DataType dt, Shape s) { Input v = x; v.dtype = dt; v.shape = s; return v; };
  Input changed = x;
  changed.bytes[5] ^= 1;
  const Input r22 = reshaped(Shape{2, 2}), r114 = reshaped(Shape{1, 1, 4});
  const Input i32 = retyped(DataType::kInt32, Shape{1, 4}), u8 = retyped(DataType::kUInt8, Shape{1, 16});
  const std::pair<const char*, Key> misses[] = {
      {"other version", MakeKey("m", 2, {x, y})},
      {"other model", MakeKey("n", 1, {x, y})},
      {"model name prefix", MakeKey("mm", 1, {x, y})},
      {"one bit of data", MakeKey("m", 1, {changed, y})},
      {"same bytes, shape [2, 2]", MakeKey("m", 1, {r22, y})},
      {"same bytes, shape [1, 1, 4]", MakeKey("m", 1, {r114, y})},
      {"same bytes as int32", MakeKey("m", 1, {i32, y})},
      {"same bytes as uint8 [1, 16]", MakeKey("m", 1, {u8, y})},
      {"inputs swapped", MakeKey("m", 1, {y, x})},
      {"one input fewer", MakeKey("m", 1, {x})},
      {"one input more", MakeKey("m", 1, {x, y, y})},
  };
  for (const auto& [name, key] : misses) EXPECT_FALSE(Hit(c, key)) << name;
  const CacheStats s = c.stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, std::size(misses));
}

TEST(PredictionCache, CopiesInAndOut) {
  PredictionCache c(1 << 20);
  const Input x = Floats({1, 2}, Shape{1, 2});
  const Key k = MakeKey("m", 1, {x});
  std::vector<NamedTensor> original = Out(3);
  c.Insert(k.key(), original);
  static_cast<float*>(original[0].tensor.data)[0] = 99;  // the caller reuses its buffer
  std::vector<NamedTensor> out;
  ASSERT_TRUE(c.Lookup(k.key(), &out));
  EXPECT_EQ(ValueOf(out), 3.0f);
  static_cast<float*>(out[0].tensor.data)[0] = 42;  // the caller writes into its answer
  float v = 0;
  ASSERT_TRUE(Hit(c, k, &v));
  EXPECT_EQ(v, 3.0f);
}

// Four keys whose entries are all charged the same.
struct Four {
  std::vector<Input> inputs;
  std::vector<Key> keys;
  size_t entry_bytes = 0;
};
Four MakeFour() {
  Four f;
  for (int i = 0; i < 4; ++i) f.inputs.push_back(Floats({float(i), 0, 0, 0}, Shape{1, 4}));
  for (int i = 0; i < 4; ++i) f.keys.push_back(MakeKey("m", 1, {f.inputs[i]}));
  f.entry_bytes = PredictionCache::EntryBytes(f.keys[0].key(), Out(0));
  return f;
}

TEST(PredictionCache, EvictsLeastRecentlyUsedWithinTheByteBudget) {
  const Four f = MakeFour();
  ASSERT_GT(f.entry_bytes, PredictionCache::kEntryOverheadBytes);
  PredictionCache c(3 * f.entry_bytes);
  for (int i = 0; i < 3; ++i) c.Insert(f.keys[i].key(), Out(float(i)));
  ASSERT_TRUE(Hit(c, f.keys[0]));     // order now (newest first): 0, 2, 1
  c.Insert(f.keys[3].key(), Out(3));  // evicts 1
  EXPECT_FALSE(Hit(c, f.keys[1]));
  for (int i : {0, 2, 3}) {
    float v = -1;
    EXPECT_TRUE(Hit(c, f.keys[i], &v)) << i;
    EXPECT_EQ(v, float(i));
  }
  CacheStats s = c.stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.entries, 3u);
  EXPECT_EQ(s.bytes, 3 * f.entry_bytes);
  // A larger entry evicts as many of the oldest as it needs.
  const Input big = Floats(std::vector<float>(64, 1.0f), Shape{1, 64});
  const Key kb = MakeKey("m", 1, {big});
  const size_t big_bytes = PredictionCache::EntryBytes(kb.key(), Out(5, 64));
  ASSERT_LE(big_bytes, 3 * f.entry_bytes);
  ASSERT_GT(big_bytes, 2 * f.entry_bytes);
  c.Insert(kb.key(), Out(5, 64));
  s = c.stats();
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.evictions, 4u);
  EXPECT_EQ(s.bytes, big_bytes);
  EXPECT_TRUE(Hit(c, kb));
}

TEST(PredictionCache, TooLargeEntriesAreNotStored) {
  const Four f = MakeFour();
  for (size_t budget : {size_t{0}, f.entry_bytes - 1}) {
    PredictionCache c(budget);
    c.Insert(f.keys[0].key(), Out(0));
    EXPECT_FALSE(Hit(c, f.keys[0])) << budget;
    const CacheStats s = c.stats();
    EXPECT_EQ(s.too_large, 1u);
    EXPECT_EQ(s.insertions, 0u);
    EXPECT_EQ(s.entries, 0u);
    EXPECT_EQ(s.bytes, 0u);
  }
  PredictionCache exact(f.entry_bytes);
  exact.Insert(f.keys[0].key(), Out(0));
  EXPECT_TRUE(Hit(exact, f.keys[0]));
}

TEST(PredictionCache, ReinsertReplaces) {
  const Four f = MakeFour();
  PredictionCache c(1 << 20);
  c.Insert(f.keys[0].key(), Out(1));
  c.Insert(f.keys[0].key(), Out(2));
  float v = 0;
  ASSERT_TRUE(Hit(c, f.keys[0], &v));
  EXPECT_EQ(v, 2.0f);
  const CacheStats s = c.stats();
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.bytes, f.entry_bytes);
  EXPECT_EQ(s.insertions, 2u);
  EXPECT_EQ(s.evictions, 0u);
}

TEST(PredictionCache, InvalidKeysMissAndAreNotStored) {
  PredictionCache c(1 << 20);
  Input neg = Floats({1, 2}, Shape{1, 2});
  neg.shape = Shape{-1, 2};
  const Key k = MakeKey("m", 1, {neg});
  EXPECT_EQ(PredictionCache::EntryBytes(k.key(), Out(0)), 0u);
  c.Insert(k.key(), Out(0));
  EXPECT_FALSE(Hit(c, k));
  const TensorView null_data{nullptr, DataType::kFloat32, Shape{1, 2}};
  c.Insert(CacheKey{"m", 1, std::span<const TensorView>(&null_data, 1)}, Out(0));
  const CacheStats s = c.stats();
  EXPECT_EQ(s.invalid, 2u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.entries, 0u);
}

TEST(PredictionCache, InvalidateDropsOneVersion) {
  PredictionCache c(1 << 20);
  const Input x = Floats({1, 2}, Shape{1, 2});
  const Input y = Floats({3, 4}, Shape{1, 2});
  const std::vector<Key> keep = {MakeKey("m", 1, {x}), MakeKey("m", 3, {x}), MakeKey("mm", 2, {x}),
                                 MakeKey("", 2, {x})};
  const std::vector<Key> drop = {MakeKey("m", 2, {x}), MakeKey("m", 2, {y}), MakeKey("m", 2, {})};
  for (const Key& k : keep) c.Insert(k.key(), Out(1));
  for (const Key& k : drop) c.Insert(k.key(), Out(2));
  c.Invalidate("m", 2);
  for (const Key& k : drop) EXPECT_FALSE(Hit(c, k)) << k.model << " v" << k.version;
  size_t kept_bytes = 0;
  for (const Key& k : keep) {
    EXPECT_TRUE(Hit(c, k)) << k.model << " v" << k.version;
    kept_bytes += PredictionCache::EntryBytes(k.key(), Out(1));
  }
  const CacheStats s = c.stats();
  EXPECT_EQ(s.invalidated, drop.size());
  EXPECT_EQ(s.entries, keep.size());
  EXPECT_EQ(s.bytes, kept_bytes);
}

// A random mix of operations: the stats must add up against a count kept here.
TEST(PredictionCache, StatsAddUp) {
  const Four f = MakeFour();
  PredictionCache c(2 * f.entry_bytes);
  std::mt19937 rng(7);
  uint64_t lookups = 0, hits = 0, inserts = 0;
  for (int i = 0; i < 500; ++i) {
    const Key& k = f.keys[rng() % 4];
    if (rng() % 2) {
      ++lookups;
      hits += Hit(c, k) ? 1 : 0;
    } else {
      c.Insert(k.key(), Out(0));
      ++inserts;
    }
  }
  const CacheStats s = c.stats();
  EXPECT_EQ(s.hits + s.misses, lookups);
  EXPECT_EQ(s.hits, hits);
  EXPECT_EQ(s.insertions, inserts);
  EXPECT_LE(s.entries, 2u);
  EXPECT_EQ(s.bytes, s.entries * f.entry_bytes);
}

// Every key digests to the same value: lookups must still only ever return
// the answer stored for exactly that input, and LRU and Invalidate still work.
TEST(PredictionCache, ForcedCollisionsNeverCrossAnswers) {
  std::atomic<int> digests{0};
  auto collide = [&](std::string_view) {
    ++digests;
    return Digest128{42, 42};
  };
  constexpr int kKeys = 32;
  std::vector<Input> inputs;
  for (int i = 0; i < kKeys; ++i) inputs.push_back(Floats({float(i), float(i % 3)}, Shape{1, 2}));
  // Key i uses model "m", version 1 + i % 2.
  std::vector<Key> keys;
  for (int i = 0; i < kKeys; ++i) keys.push_back(MakeKey("m", 1 + i % 2, {inputs[i]}));
  const size_t entry = PredictionCache::EntryBytes(keys[0].key(), Out(0));
  PredictionCache c(kKeys * entry, collide);

  for (int i = 0; i < kKeys; ++i) c.Insert(keys[i].key(), Out(float(100 + i)));
  for (int i = kKeys - 1; i >= 0; --i) {
    float v = -1;
    ASSERT_TRUE(Hit(c, keys[i], &v)) << i;
    EXPECT_EQ(v, float(100 + i)) << "key " << i << " got another input's answer";
  }
  const Input stranger = Floats({1000, 0}, Shape{1, 2});
  EXPECT_FALSE(Hit(c, MakeKey("m", 1, {stranger})));
  EXPECT_GT(digests.load(), 0);

  // LRU under collisions: the lookups above left key 0 newest, key 31 oldest.
  const Input extra = Floats({-1, -1}, Shape{1, 2});
  c.Insert(MakeKey("m", 1, {extra}).key(), Out(-1));
  EXPECT_FALSE(Hit(c, keys[kKeys - 1]));
  EXPECT_TRUE(Hit(c, MakeKey("m", 1, {extra})));

  // Invalidate under collisions drops exactly version 2 (the odd keys).
  c.Invalidate("m", 2);
  for (int i = 0; i < kKeys - 1; ++i) {
    float v = -1;
    EXPECT_EQ(Hit(c, keys[i], &v), i % 2 == 0) << i;
    if (i % 2 == 0) EXPECT_EQ(v, float(100 + i));
  }
}

TEST(DefaultDigest, KnownAnswersAndSpread) {
  EXPECT_EQ(DefaultDigest(""), (Digest128{0, 0}));  // MurmurHash3 x64_128 of nothing, seed 0
  // The published MurmurHash3_x64_128 value (seed 0), 6c1b07bc7bbc4be347939ac4a93c437a as bytes.
  EXPECT_EQ(DefaultDigest("The quick brown fox jumps over the lazy dog"),
            (Digest128{0xe34bbc7bbc071b6cULL, 0x7a433ca9c49a9347ULL}));
  // Every length 0..40 (every tail size, one and two blocks) and every single-bit
  // flip of a 40-byte string digest differently, in both halves.
  std::string s(40, '\0');
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 37 + 11);
  std::set<uint64_t> lo, hi;
  for (size_t n = 0; n <= s.size(); ++n) {
    const Digest128 d = DefaultDigest(std::string_view(s).substr(0, n));
    lo.insert(d.lo);
    hi.insert(d.hi);
  }
  for (size_t bit = 0; bit < s.size() * 8; ++bit) {
    std::string t = s;
    t[bit / 8] = static_cast<char>(t[bit / 8] ^ (1 << (bit % 8)));
    const Digest128 d = DefaultDigest(t);
    lo.insert(d.lo);
    hi.insert(d.hi);
  }
  EXPECT_EQ(lo.size(), 41u + 320u);
  EXPECT_EQ(hi.size(), 41u + 320u);
}

// Threads look up, insert and invalidate over a small key space, with a digest
// that collides in four buckets and a budget that forces evictions. A hit must
// always carry the value stored for exactly that key.
TEST(PredictionCacheConcurrent, ManyThreadsNeverCrossAnswers) {
  constexpr int kThreads = 4;
  constexpr int kKeys = 64;
  const int iterations = testing::Scaled(20'000, 10);
  std::vector<Input> inputs;
  for (int i = 0; i < kKeys; ++i) inputs.push_back(Floats({float(i), 1, 2, 3}, Shape{1, 4}));
  std::vector<Key> keys;
  for (int i = 0; i < kKeys; ++i) keys.push_back(MakeKey("m", 1 + i % 2, {inputs[i]}));
  const size_t entry = PredictionCache::EntryBytes(keys[0].key(), Out(0));
  auto four_buckets = [](std::string_view b) { return Digest128{DefaultDigest(b).lo & 3, 0}; };
  PredictionCache c(16 * entry, four_buckets);
  std::atomic<uint64_t> lookups{0}, wrong{0};

  std::atomic<bool> go{false};
  auto worker = [&](unsigned seed) {
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();  // start together
    std::mt19937 rng(seed);
    uint64_t my_lookups = 0;
    for (int i = 0; i < iterations; ++i) {
      const int k = static_cast<int>(rng() % kKeys);
      const unsigned op = rng() % 16;
      if (op == 0) {
        c.Invalidate("m", 1 + k % 2);
      } else if (op < 6) {
        c.Insert(keys[k].key(), Out(float(k)));
      } else {
        ++my_lookups;
        float v = -1;
        if (Hit(c, keys[k], &v) && v != float(k)) ++wrong;
      }
    }
    lookups += my_lookups;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, 99u + t);
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();

  const CacheStats s = c.stats();
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_EQ(s.hits + s.misses, lookups.load());
  EXPECT_GT(s.hits, 0u);
  EXPECT_GT(s.evictions, 0u);
  EXPECT_LE(s.bytes, c.max_bytes());
  EXPECT_EQ(s.bytes, s.entries * entry);
}

}  // namespace
}  // namespace inferline
