// The native load generator against a live native frontend (over a real Engine/Router): unary
// calls and ModelStreamInfer streams, sent directly over HTTP/2 (nghttp2: h2_driver.cpp,
// h2_stream_driver.cpp) and through gRPC C-core, closed and open loop; counts checked against the
// frontend's own, fallback answers detected from their bytes, error answers of a stream, each
// call's deadline, and what a stream still owed when the server ended it or when the run ended.
// Built where both the frontend and the load generator are.
#include <thread>

#include "inferline/grpc_load.h"
#include "test_grpc_fixture.h"

namespace inferline::grpctest {
namespace {

GrpcLoadOptions Options(const Frontend& f, const std::string& model, bool direct) {
  GrpcLoadOptions o;
  o.target = "127.0.0.1:" + std::to_string(f.fe->port());
  std::string bytes;
  EXPECT_TRUE(CalcRequest(model, 1).SerializeToString(&bytes));
  o.payloads = {bytes};
  o.channels = 2;
  o.concurrency = 8;
  o.warmup_s = 0.1;
  o.duration_s = kSanitized ? 1.0 : 0.5;
  o.timeout_s = 10;
  o.direct = direct;
  return o;
}

// Streams: bidi ModelStreamInfer calls, several requests in flight on each.
GrpcLoadOptions StreamOptions(const Frontend& f, const std::string& model, bool direct) {
  GrpcLoadOptions o = Options(f, model, direct);
  o.method = "/inference.GRPCInferenceService/ModelStreamInfer";
  o.stream = true;
  o.streams = 3;  // 8 requests in flight: 3, 3 and 2 per stream, over the 2 connections
  return o;
}

GrpcLoadResult RunLoad(GrpcLoadOptions o) {
  auto load = GrpcLoad::Create(std::move(o));
  EXPECT_TRUE(load.ok());
  EXPECT_TRUE(load.value()->WaitReady(10).ok());
  auto result = load.value()->Run(std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count() + 0.05);
  EXPECT_TRUE(result.ok()) << result.status().ToString();
  return std::move(result).value();
}

// GetParam(): direct HTTP/2 (true) or gRPC C-core (false). Under TSan only the direct client runs:
// with a C-core client and server in one process at full rate, TSan reports gRPC's own call
// objects (arena memory reused between calls, handed over inside the uninstrumented libgrpc)
// faster than tests/tsan.supp can name them; the frontend's TSan tests cover its server side.
class LiveLoad : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
#if defined(INFERLINE_TSAN_ANNOTATIONS)
    if (!GetParam()) GTEST_SKIP() << "gRPC C-core client under TSan: see above";
#endif
  }
};

TEST_P(LiveLoad, ClosedLoopCountsMatchTheServers) {
  Frontend f;
  f.Load("calc", 1);
  f.Start();
  const GrpcLoadResult r = RunLoad(Options(f, "calc", GetParam()));
#ifdef INFERLINE_HAVE_NGHTTP2
  EXPECT_EQ(r.client, GetParam() ? "nghttp2" : "grpc");
#endif
  EXPECT_TRUE(r.errors.empty());
  EXPECT_GT(r.ok, 0u);
  EXPECT_EQ(r.fallback, 0u);
  EXPECT_EQ(r.sent_total, r.answered_total);
  EXPECT_EQ(f.fe->Stats().admission.admitted, r.answered_total);
}

TEST_P(LiveLoad, OpenLoopSendsEveryScheduledRequest) {
  Frontend f;
  f.Load("calc", 1);
  f.Start();
  GrpcLoadOptions o = Options(f, "calc", GetParam());
  o.rate_rps = 200;
  o.duration_s = 1.0;
  const GrpcLoadResult r = RunLoad(o);
  EXPECT_TRUE(r.errors.empty());
  EXPECT_NEAR(static_cast<double>(r.ok), 200.0, 1.0);  // scheduled in the measured second (constant gaps)
  EXPECT_EQ(r.sent_total, r.answered_total);
  EXPECT_EQ(f.fe->Stats().admission.admitted, r.answered_total);
}

TEST_P(LiveLoad, ErrorsByStatusAndFallbacksFromTheBytes) {
  Frontend f;
  ASSERT_NO_FATAL_FAILURE(StartPrimaryFallingBack(f));
  GrpcLoadResult r = RunLoad(Options(f, "primary", GetParam()));
  EXPECT_TRUE(r.errors.empty());
  EXPECT_GT(r.ok, 0u);
  EXPECT_EQ(r.fallback, r.ok);
  r = RunLoad(Options(f, "ghost", GetParam()));
  EXPECT_EQ(r.ok, 0u);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_GT(r.errors.at("NOT_FOUND"), 0u);
}

TEST_P(LiveLoad, ACallPastItsDeadlineEndsDeadlineExceeded) {
  Gate gate(false);
  Frontend f;
  f.Load("calc", 1, &gate);
  f.Start();
  GrpcLoadOptions o = Options(f, "calc", GetParam());
  o.concurrency = 2;
  o.warmup_s = 0;
  o.duration_s = 0.2;
  o.timeout_s = 0.5;
  const GrpcLoadResult r = RunLoad(o);
  gate.Open();
  EXPECT_EQ(r.ok, 0u);
  ASSERT_EQ(r.errors.count("DEADLINE_EXCEEDED"), 1u);
  EXPECT_EQ(r.errors.at("DEADLINE_EXCEEDED"), 2u);
}

TEST_P(LiveLoad, StreamsClosedLoopCountsMatchTheServers) {
  Frontend f;
  f.Load("calc", 1);
  f.Start();
  const GrpcLoadResult r = RunLoad(StreamOptions(f, "calc", GetParam()));
#ifdef INFERLINE_HAVE_NGHTTP2
  EXPECT_EQ(r.client, GetParam() ? "nghttp2" : "grpc");
#endif
  EXPECT_TRUE(r.errors.empty());
  EXPECT_GT(r.ok, 0u);
  EXPECT_EQ(r.latency.count, r.ok);
  EXPECT_EQ(r.fallback, 0u);
  EXPECT_EQ(r.sent_total, r.answered_total);
  EXPECT_EQ(f.fe->Stats().admission.admitted, r.answered_total);
}

TEST_P(LiveLoad, StreamsOpenLoopSendEveryScheduledRequest) {
  Frontend f;
  f.Load("calc", 1);
  f.Start();
  GrpcLoadOptions o = StreamOptions(f, "calc", GetParam());
  o.rate_rps = 200;
  o.duration_s = 1.0;
  const GrpcLoadResult r = RunLoad(o);
  EXPECT_TRUE(r.errors.empty());
  EXPECT_NEAR(static_cast<double>(r.ok), 200.0, 1.0);  // scheduled in the measured second (constant gaps)
  EXPECT_EQ(r.lag.count, r.ok);
  EXPECT_EQ(r.sent_total, r.answered_total);
  EXPECT_EQ(f.fe->Stats().admission.admitted, r.answered_total);
}

TEST_P(LiveLoad, StreamErrorAnswersAndFallbacksFromTheBytes) {
  Frontend f;
  ASSERT_NO_FATAL_FAILURE(StartPrimaryFallingBack(f));
  GrpcLoadResult r = RunLoad(StreamOptions(f, "primary", GetParam()));
  EXPECT_TRUE(r.errors.empty());
  EXPECT_GT(r.ok, 0u);
  EXPECT_EQ(r.fallback, r.ok);
  // An unknown model: an error answer per request (the stream goes on), its message's first 80 bytes
  r = RunLoad(StreamOptions(f, "ghost", GetParam()));
  EXPECT_EQ(r.ok, 0u);
  ASSERT_EQ(r.errors.size(), 1u);
  const auto& [status, count] = *r.errors.begin();
  EXPECT_EQ(status.rfind("STREAM: ", 0), 0u) << status;
  EXPECT_TRUE(Contains(status, "ghost")) << status;
  EXPECT_LE(status.size(), 8u + 80u);
  EXPECT_GT(count, 0u);
  EXPECT_EQ(r.sent_total, r.answered_total);
}

TEST_P(LiveLoad, WhatAStreamOwedWhenTheServerEndedItCountsAsItsStatus) {
  Gate gate(false);
  Frontend f;
  f.Load("calc", 1, &gate);
  f.Start();
  GrpcLoadOptions o = StreamOptions(f, "calc", GetParam());
  o.concurrency = 4;
  o.streams = 2;
  o.warmup_s = 0;
  o.duration_s = kSanitized ? 2.0 : 0.5;
  std::thread ender([&f] {
    Pause(150);             // every request sent, none answered
    f.fe->Shutdown(0);      // the streams are ended: trailers with UNAVAILABLE
  });
  const GrpcLoadResult r = RunLoad(o);
  ender.join();
  gate.Open();
  EXPECT_EQ(r.ok, 0u);
  ASSERT_EQ(r.errors.count("UNAVAILABLE"), 1u);
  EXPECT_EQ(r.errors.at("UNAVAILABLE"), 4u);
  EXPECT_EQ(r.sent_total, 4u);
  EXPECT_EQ(r.answered_total, 4u);
}

TEST_P(LiveLoad, AStreamStillOwingAnswersPastTheTimeoutIsCancelled) {
  Gate gate(false);
  Frontend f;
  f.Load("calc", 1, &gate);
  f.Start();
  GrpcLoadOptions o = StreamOptions(f, "calc", GetParam());
  o.concurrency = 2;
  o.streams = 1;
  o.warmup_s = 0;
  o.duration_s = 0.2;
  o.timeout_s = 0.5;        // how long the stream may owe answers after the end
  const auto start = std::chrono::steady_clock::now();
  const GrpcLoadResult r = RunLoad(o);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  gate.Open();
  EXPECT_EQ(r.ok, 0u);
  ASSERT_EQ(r.errors.count("NO_ANSWER"), 1u);
  EXPECT_EQ(r.errors.at("NO_ANSWER"), 2u);
  EXPECT_EQ(r.answered_total, 2u);
}

INSTANTIATE_TEST_SUITE_P(Client, LiveLoad, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "Direct" : "GrpcCore"; });

}  // namespace
}  // namespace inferline::grpctest
