// The native load generator against a live native frontend (over a real Engine/Router): unary
// calls sent directly over HTTP/2 (nghttp2, h2_driver.cpp) and through gRPC C-core, closed and
// open loop; counts checked against the frontend's own, fallback answers detected from their
// bytes, and each call's deadline. Built where both the frontend and the load generator are.
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
  f.Load("primary", 1).fail = true;
  f.Load("backup", 1);
  ModelPolicy p;
  p.route = SingleVersionPolicy(1, 1);
  p.route.fallback = {{"backup", 0}};
  ASSERT_TRUE(f.router.Publish("primary", p).ok());
  f.Start();
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

INSTANTIATE_TEST_SUITE_P(Client, LiveLoad, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "Direct" : "GrpcCore"; });

}  // namespace
}  // namespace inferline::grpctest
