// inferline_grpc_load without a server: the answer classification (stream answers' id and
// error_message, fallback search, the id suffix a parser reads back), the histogram buckets
// (python/inferline/loadgen/histogram.py's indices), the recorder's window and merge, option
// checks and a target that never connects. Against real servers: tests/python/loadgen/
// test_native_transport.py.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "answer.h"
#include "inferline/grpc_load.h"
#include "recorder.h"

namespace il = inferline::loadgen;

namespace {

std::string Varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
  return out;
}

std::string Bytes(uint32_t field, const std::string& value) {
  return Varint(field << 3 | 2) + Varint(value.size()) + value;
}

}  // namespace

TEST(GrpcLoadAnswer, StreamAnswerIdAndError) {
  // ModelInferResponse: model_name, model_version, id, then a parameter and an output
  const std::string inner = Bytes(1, "digits-mlp") + Bytes(2, "1") + Bytes(3, "123456789") +
                            Bytes(4, Bytes(1, "fallback_reason") + Bytes(2, Bytes(3, "x")));
  il::StreamAnswer a = il::ReadStreamAnswer(Bytes(2, inner));
  EXPECT_TRUE(a.has_id);
  EXPECT_EQ(a.id, 123456789u);
  EXPECT_TRUE(a.error.empty());
  EXPECT_TRUE(il::HasFallback(Bytes(2, inner)));
  EXPECT_FALSE(il::HasFallback(Bytes(2, Bytes(1, "digits-mlp"))));

  const std::string refused = Bytes(1, "model 'x' is not being served") + Bytes(2, Bytes(3, "not-a-number"));
  a = il::ReadStreamAnswer(refused);  // views into `refused`
  EXPECT_EQ(a.error, "model 'x' is not being served");
  EXPECT_FALSE(a.has_id);
  // truncated or malformed bytes: no id, no error, no crash
  a = il::ReadStreamAnswer(std::string("\x12\x7f\x1a", 3));
  EXPECT_FALSE(a.has_id);
  EXPECT_TRUE(a.error.empty());
  EXPECT_FALSE(il::ReadStreamAnswer(std::string("\xff\xff\xff", 3)).has_id);
}

TEST(GrpcLoadAnswer, IdSuffixIsFieldThree) {
  for (uint64_t id : {0ull, 7ull, 1234567890123ull, 18446744073709551615ull}) {
    const il::IdSuffix s(id);
    const std::string bytes(s.bytes, s.size);
    EXPECT_EQ(bytes, Bytes(3, std::to_string(id)));
  }
}

TEST(GrpcLoadRecorder, BucketsMatchPythonHistogram) {
  // python: int(math.log(v) * (1 / math.log1p(0.01))) if v > 1 else 0
  const il::Buckets b(0.01);
  EXPECT_EQ(b.Index(0.5), 0);
  EXPECT_EQ(b.Index(1.0), 0);
  EXPECT_EQ(b.Index(1.0101), 1);
  EXPECT_EQ(b.Index(1000.0), 694);
  EXPECT_EQ(b.Index(250000.0), 1249);
  EXPECT_GT(b.size(), static_cast<size_t>(b.Index(3.6e9)));
}

TEST(GrpcLoadRecorder, WindowErrorsAndSeries) {
  il::RunWindow w{0, 1000000000, 3000000000, 1000000000};
  il::Recorder r(w, 0.01);
  r.Record(0, 500000000, 600000000, {"OK", false});           // warm-up: answered, not recorded
  r.Record(1, 1000000000, 1002000000, {"OK", true});          // 2000 us, interval 0
  r.Record(9, 2500000000, 2501000000, {"OK", false});         // 1000 us, interval 1
  r.Record(2, 2600000000, 2700000000, {"NOT_FOUND", false});
  r.Record(3, 2700000000, 2700000001, {"NOT_FOUND", false});
  r.Record(4, 3000000000, 3000000001, {"UNAVAILABLE", false});  // after the window
  r.CountSent();
  r.RecordLag(500000000, 600000000);                          // warm-up: no lag
  r.RecordLag(1500000000, 1500000500);                        // 0.5 us: recorded as 1 us
  const inferline::GrpcLoadResult res = r.Result(2.0);
  EXPECT_EQ(res.answered_total, 6u);
  EXPECT_EQ(res.sent_total, 1u);
  EXPECT_EQ(res.ok, 2u);
  EXPECT_EQ(res.fallback, 1u);
  ASSERT_EQ(res.errors.size(), 1u);
  EXPECT_EQ(res.errors.at("NOT_FOUND"), 2u);
  EXPECT_EQ(res.latency.count, 2u);
  EXPECT_DOUBLE_EQ(res.latency.min_us, 1000.0);
  EXPECT_DOUBLE_EQ(res.latency.max_us, 2000.0);
  EXPECT_DOUBLE_EQ(res.latency.total_us, 3000.0);
  ASSERT_EQ(res.latency.counts.size(), 2u);
  EXPECT_EQ(res.latency.counts[0].first, 694);
  ASSERT_EQ(res.series.size(), 2u);
  EXPECT_EQ(res.series.at(0).count, 1u);
  EXPECT_EQ(res.series.at(1).count, 1u);
  EXPECT_EQ(res.lag.count, 1u);
  EXPECT_DOUBLE_EQ(res.lag.min_us, 1.0);
  EXPECT_DOUBLE_EQ(res.achieved_rps, 1.0);
}

TEST(GrpcLoad, OptionsAreChecked) {
  inferline::GrpcLoadOptions o;
  o.target = "127.0.0.1:1";
  EXPECT_EQ(inferline::GrpcLoad::Create(o).status().code(), inferline::StatusCode::kInvalidArgument);  // no payload
  o.payloads = {"x"};
  o.channels = 0;
  EXPECT_FALSE(inferline::GrpcLoad::Create(o).ok());
  o.channels = 1;
  o.precision = 1.5;
  EXPECT_FALSE(inferline::GrpcLoad::Create(o).ok());
  o.precision = 0.01;
  EXPECT_TRUE(inferline::GrpcLoad::Create(o).ok());
}

TEST(GrpcLoad, UnreachableTargetIsNotReady) {
  inferline::GrpcLoadOptions o;
  o.target = "127.0.0.1:1";  // nothing listens on port 1
  o.payloads = {"x"};
  auto load = inferline::GrpcLoad::Create(o);
  ASSERT_TRUE(load.ok());
  const inferline::Status s = load.value()->WaitReady(0.3);
  EXPECT_EQ(s.code(), inferline::StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("not connected"), std::string::npos);
}
