// Routing decisions as data: the stable hash, buckets, arms, fallback reasons, deadline reach.
#include "inferline/route_policy.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <vector>

namespace inferline {
namespace {

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

TEST(StableHash, NeverChangesAcrossBuildsAndMachines) {
  // Pinned values: replicas of different builds must route a key alike. A change to the
  // hash changes these and re-routes every key of a running fleet; make it only deliberately.
  struct Case { std::string_view bytes; uint64_t hash; };
  const std::vector<Case> pinned = {
      {"", 0xF490368ABA8BFEACULL},
      {"a", 0xE30B69D102EC7498ULL},
      {"user-42", 0xB348F0631CEEF93BULL},
      {"0123456789abcdef0", 0x34EB03346D0CD5B6ULL},  // two words and a tail
  };
  for (const Case& c : pinned) EXPECT_EQ(StableHash64(c.bytes), c.hash) << "'" << c.bytes << "'";
  EXPECT_EQ(HashRoutingKey("user-42"), 0x68BA295F20FC2530ULL);
}

TEST(StableHash, EveryByteAndTheLengthMatter) {
  std::set<uint64_t> seen;
  std::string key(20, 'x');
  seen.insert(StableHash64(key));
  for (size_t i = 0; i < key.size(); ++i) {
    std::string k = key;
    k[i] ^= 1;
    EXPECT_TRUE(seen.insert(StableHash64(k)).second) << "flipping byte " << i;
  }
  for (size_t n = 0; n < 20; ++n) EXPECT_TRUE(seen.insert(StableHash64(std::string(n, 'x'))).second) << n;
  EXPECT_TRUE(seen.insert(StableHash64(std::string(1, '\0'))).second);  // NUL bytes are bytes
  EXPECT_NE(StableHash64("abc", 1), StableHash64("abc", 2));
  EXPECT_NE(HashRoutingKey("abc"), StableHash64("abc"));
}

TEST(RouteBucket, SpreadsKeysEvenly) {
  constexpr int kKeys = 200'000, kCells = 10;  // 10 cells of 1000 buckets: 20,000 keys expected each
  std::array<int, kCells> cells{};
  for (int i = 0; i < kKeys; ++i) {
    const uint32_t b = RouteBucket(HashRoutingKey("user-" + std::to_string(i)));
    ASSERT_LT(b, kRouteBuckets);
    ++cells[b / (kRouteBuckets / kCells)];
  }
  for (int c : cells) EXPECT_NEAR(c, kKeys / kCells, 600) << "cell count off by more than ~4 sigma";
  EXPECT_EQ(RouteBucket(0), 0u);
  EXPECT_EQ(RouteBucket(kMax), kRouteBuckets - 1);
}

TEST(HashInputs, SameInputsSameKeyAndDtypeOrShapeChangeIt) {
  std::vector<float> x(8, 1.5f), y = x;
  std::vector<int32_t> xi(8);
  std::memcpy(xi.data(), x.data(), 32);  // the same 32 bytes as another dtype
  auto key = [](const void* data, DataType dt, Shape s) { return HashInputs({TensorView{data, dt, s}}); };
  const uint64_t base = key(x.data(), DataType::kFloat32, Shape{1, 8});
  EXPECT_EQ(base, key(y.data(), DataType::kFloat32, Shape{1, 8}));  // equal bytes elsewhere in memory
  EXPECT_NE(base, key(xi.data(), DataType::kInt32, Shape{1, 8}));
  EXPECT_NE(base, key(x.data(), DataType::kFloat32, Shape{2, 4}));
  y[7] = 2.0f;
  EXPECT_NE(base, key(y.data(), DataType::kFloat32, Shape{1, 8}));
  // Two inputs are not the concatenation of one.
  const uint64_t two = HashInputs({TensorView{x.data(), DataType::kFloat32, Shape{1, 4}},
                                   TensorView{x.data() + 4, DataType::kFloat32, Shape{1, 4}}});
  EXPECT_NE(two, base);
  EXPECT_NE(HashInputs({}), base);
  // A negative dim (never a valid request) is hashed by shape alone, without reading data.
  EXPECT_EQ(key(nullptr, DataType::kFloat32, Shape{-1, 8}), key(x.data(), DataType::kFloat32, Shape{-1, 8}));
}

RoutePolicy Arms(std::vector<RouteArm> arms) {
  RoutePolicy p;
  p.arms = std::move(arms);
  return p;
}

TEST(RoutePolicy, ValidateNamesTheArmOrLinkAtFault) {
  struct Case { const char* name; RoutePolicy policy; const char* want; };
  RoutePolicy bad_link = SingleVersionPolicy(1);
  bad_link.fallback = {{"", 0}};
  RoutePolicy neg_link = SingleVersionPolicy(1);
  neg_link.fallback = {{"logreg", -1}};
  const std::vector<Case> cases = {
      {"no arms", Arms({}), "no arms"},
      {"version 0", Arms({{0, 0, kRouteBuckets}}), "arm 0: version 0"},
      {"gap", Arms({{1, 0, 100}, {2, 200, kRouteBuckets}}), "arm 1: starts at bucket 200, expected 100"},
      {"overlap", Arms({{1, 0, 300}, {2, 200, kRouteBuckets}}), "arm 1: starts at bucket 200, expected 300"},
      {"empty arm", Arms({{1, 0, 0}, {2, 0, kRouteBuckets}}), "arm 0: buckets [0, 0) are empty"},
      {"beyond", Arms({{1, 0, kRouteBuckets + 1}}), "beyond 10000"},
      {"short", Arms({{1, 0, 9000}}), "cover buckets [0, 9000), not all 10000"},
      {"empty link model", bad_link, "fallback 0: empty model name"},
      {"negative link version", neg_link, "fallback 0: version must be >= 0"},
  };
  for (const Case& c : cases) {
    Status st = c.policy.Validate();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(st.message().find(c.want), std::string::npos) << c.name << ": " << st.message();
  }
  RoutePolicy ok = Arms({{3, 0, 9000}, {4, 9000, kRouteBuckets}});
  ok.fallback = {{"logreg", 0}, {"constant", 2}};
  EXPECT_TRUE(ok.Validate().ok());
  EXPECT_TRUE(SingleVersionPolicy(7).Validate().ok());
}

TEST(RoutePolicy, PickArmOwnsEachBucketOnce) {
  const RoutePolicy p = Arms({{3, 0, 9000}, {4, 9000, 9900}, {5, 9900, kRouteBuckets}});
  ASSERT_TRUE(p.Validate().ok());
  struct Case { uint32_t bucket; int64_t version; };
  for (const Case& c : std::vector<Case>{{0, 3}, {8999, 3}, {9000, 4}, {9899, 4}, {9900, 5}, {9999, 5}}) {
    const RouteArm* arm = PickArm(p, c.bucket);
    ASSERT_NE(arm, nullptr) << c.bucket;
    EXPECT_EQ(arm->version, c.version) << c.bucket;
  }
  EXPECT_EQ(PickArm(p, kRouteBuckets), nullptr);
  EXPECT_EQ(PickArm(Arms({{1, 10, kRouteBuckets}}), 5), nullptr);  // invalid policy: a hole
  EXPECT_EQ(PickArm(Arms({}), 0), nullptr);
  // The split follows the buckets: 90/9/1 percent of many keys.
  std::array<int, 6> by_version{};
  for (int i = 0; i < 100'000; ++i) ++by_version[PickArm(p, RouteBucket(HashRoutingKey(std::to_string(i))))->version];
  EXPECT_NEAR(by_version[3], 90'000, 600);
  EXPECT_NEAR(by_version[4], 9'000, 400);
  EXPECT_NEAR(by_version[5], 1'000, 150);
}

TEST(FallbackFor, MapsThePrimarysStatusToAReason) {
  struct Case { StatusCode code; FallbackReason want; const char* name; };
  const std::vector<Case> cases = {
      {StatusCode::kOk, FallbackReason::kNone, "none"},
      {StatusCode::kInvalidArgument, FallbackReason::kNone, "none"},  // the caller's fault
      {StatusCode::kCancelled, FallbackReason::kNone, "none"},
      {StatusCode::kFailedPrecondition, FallbackReason::kNone, "none"},
      {StatusCode::kResourceExhausted, FallbackReason::kOverload, "overload"},
      {StatusCode::kDeadlineExceeded, FallbackReason::kDeadline, "deadline"},
      {StatusCode::kUnavailable, FallbackReason::kUnavailable, "unavailable"},
      {StatusCode::kNotFound, FallbackReason::kUnavailable, "unavailable"},
      {StatusCode::kInternal, FallbackReason::kError, "error"},
      {StatusCode::kUnknown, FallbackReason::kError, "error"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(FallbackFor(c.code), c.want) << StatusCodeName(c.code);
    EXPECT_STREQ(FallbackReasonName(FallbackFor(c.code)), c.name) << StatusCodeName(c.code);
  }
  EXPECT_STREQ(FallbackReasonName(FallbackReason::kBreakerOpen), "breaker_open");
}

TEST(WouldMissDeadline, ComparesPredictedFinishWithTheDeadline) {
  struct Case { uint64_t now, deadline, wait, compute; bool miss; const char* name; };
  const std::vector<Case> cases = {
      {1000, 0, kMax, kMax, false, "no deadline"},
      {1000, 2000, 400, 600, false, "finishes exactly at the deadline"},
      {1000, 2000, 400, 601, true, "one microsecond late"},
      {1000, 1500, 0, 0, false, "idle primary, time left"},
      {3000, 2000, 0, 0, true, "deadline already past"},
      {kMax - 5, kMax - 1, 10, 10, true, "saturates instead of wrapping"},
      {0, kMax, kMax - 1, 1, false, "huge but reachable"},
  };
  for (const Case& c : cases) EXPECT_EQ(WouldMissDeadline(c.now, c.deadline, c.wait, c.compute), c.miss) << c.name;
}

}  // namespace
}  // namespace inferline
