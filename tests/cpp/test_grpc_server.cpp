// The native gRPC frontend as a server: the request tap and arm watches, Stats, bind and option errors, TLS, the
// message size limit, SO_REUSEPORT, and Shutdown with calls in flight.
#include <grpcpp/security/credentials.h>

#include <algorithm>
#include <mutex>

#include "test_grpc_fixture.h"

namespace inferline::grpctest {
namespace {

class CollectTap final : public RequestTap {
 public:
  void Observe(TapRecord record) noexcept override {
    std::lock_guard<std::mutex> lock(mu_);
    records.push_back(std::move(record));
  }
  std::vector<TapRecord> Records() {
    std::lock_guard<std::mutex> lock(mu_);
    return records;
  }

 private:
  std::mutex mu_;
  std::vector<TapRecord> records;
};

TEST(GrpcServerTest, TheTapCopiesTheShareOfAModelsAnswers) {
  CollectTap tap;
  Frontend f;
  f.Load("calc", 1);
  f.Start({}, nullptr, &tap);
  ModelInferResponse resp;
  ASSERT_TRUE(f.Infer(CalcRequest("calc", 2, true, "a"), &resp).ok());
  EXPECT_TRUE(tap.Records().empty());  // share 0 by default
  f.fe->SetTapShare("calc", 1.0);
  ModelInferRequest req = CalcRequest("calc", 2, true, "b");
  req.add_outputs()->set_name("neg");
  ASSERT_TRUE(f.Infer(req, &resp).ok());
  // The tap runs after the answer went out: wait for it.
  for (int i = 0; i < 200 && tap.Records().empty(); ++i) Pause(5);
  std::vector<TapRecord> records = tap.Records();
  ASSERT_EQ(records.size(), 1u);
  const TapRecord& r = records[0];
  EXPECT_EQ(r.model, "calc");
  EXPECT_EQ(r.request_id, "b");
  EXPECT_EQ(r.input_names, (std::vector<std::string>{"x", "k"}));
  ASSERT_EQ(r.inputs.size(), 2u);
  EXPECT_EQ(static_cast<const float*>(r.inputs[0].data)[2], 1.5f);
  EXPECT_EQ(static_cast<const int8_t*>(r.inputs[1].data)[1], 2);
  EXPECT_TRUE(r.result.status.ok());
  ASSERT_EQ(r.result.outputs.size(), 3u);  // all outputs, whatever the client asked for
  EXPECT_EQ(r.output_names, (std::vector<std::string>{"sum", "neg", "wide"}));
  EXPECT_EQ(r.result.answered_model, "calc");
  EXPECT_EQ(r.result.answered_version, 1);
  f.fe->SetTapShare("calc", 0);
  ASSERT_TRUE(f.Infer(req, &resp).ok());
  Pause();
  EXPECT_EQ(tap.Records().size(), 1u);
}

// Waits until `n` records arrived (the tap runs after the answer went out).
std::vector<TapRecord> AwaitRecords(CollectTap& tap, size_t n) {
  for (int i = 0; i < 400 && tap.Records().size() < n; ++i) Pause(5);
  return tap.Records();
}

uint64_t Sum(const std::vector<uint64_t>& v) {
  uint64_t n = 0;
  for (uint64_t x : v) n += x;
  return n;
}

TEST(GrpcServerTest, AnArmWatchCountsEachArmAndCopiesOnlyWhatIsCompared) {
  CollectTap tap;
  Frontend f;
  f.Load("calc", 1);
  f.Load("calc", 2).fail = true;  // its answers come from the fallback: errors of arm 2
  f.Load("backup", 1);
  ModelPolicy p;
  p.route.epoch = 1;
  p.route.arms = {{1, 0, 5000}, {2, 5000, kRouteBuckets}};
  p.route.fallback = {{"backup", 0}};
  ASSERT_TRUE(f.router.Publish("calc", p).ok());
  f.Start({}, nullptr, &tap);
  ArmWatch w;
  w.latency_bounds_ms = {0.001, 60000.0};
  w.arms = {{1, 1.0}, {2, 1.0}};
  w.tap_with_id = true;
  ASSERT_TRUE(f.fe->SetArmWatch("calc", w).ok());

  uint64_t on[3] = {0, 0, 0};
  ModelInferResponse resp;
  for (int key = 0; key < 24; ++key) {
    ModelInferRequest req = CalcRequest("calc", 1, true, key % 3 == 0 ? "id-" + std::to_string(key) : "");
    (*req.mutable_parameters())["routing_key"].set_string_param("k" + std::to_string(key));
    ASSERT_TRUE(f.Infer(req, &resp).ok());
    ++on[RouteBucket(HashRoutingKey("k" + std::to_string(key))) < 5000 ? 1 : 2];
  }
  ASSERT_GT(on[1], 0u);
  ASSERT_GT(on[2], 0u);
  ModelInferRequest named = CalcRequest("calc", 1);  // names its version: on no arm
  named.set_model_version("1");
  ASSERT_TRUE(f.Infer(named, &resp).ok());
  ModelInferRequest bad = CalcRequest("calc", 1);  // refused before routing
  bad.mutable_inputs(0)->set_datatype("FP64");
  EXPECT_FALSE(f.Infer(bad, &resp).ok());

  std::vector<ArmCounts> counts = f.fe->TakeArmCounts();
  ASSERT_EQ(counts.size(), 2u);
  std::sort(counts.begin(), counts.end(), [](const ArmCounts& a, const ArmCounts& b) { return a.version < b.version; });
  EXPECT_EQ(counts[0].model, "calc");
  EXPECT_EQ(counts[0].version, 1);
  EXPECT_EQ(counts[0].requests, on[1]);
  EXPECT_EQ(counts[0].errors, 0u);
  EXPECT_EQ(counts[1].version, 2);
  EXPECT_EQ(counts[1].requests, on[2]);
  EXPECT_EQ(counts[1].errors, on[2]);
  EXPECT_EQ(counts[1].fallbacks, on[2]);
  for (const ArmCounts& c : counts) {
    ASSERT_EQ(c.latency.size(), 3u);
    EXPECT_EQ(c.latency[0], 0u);  // nothing answers within 1 us
    EXPECT_EQ(Sum(c.latency), c.requests);
  }
  EXPECT_TRUE(f.fe->TakeArmCounts().empty());  // taken: nothing since

  // Copies: every OK answer of arm 1 (share 1); arm 2's fallback answers never.
  std::vector<TapRecord> records = AwaitRecords(tap, on[1]);
  Pause();
  records = tap.Records();
  ASSERT_EQ(records.size(), on[1]);
  for (const TapRecord& r : records) {
    EXPECT_EQ(r.result.primary_version, 1);
    EXPECT_EQ(r.result.answered_version, 1);
    EXPECT_TRUE(r.reasons & kTapCopy);
    EXPECT_EQ((r.reasons & kTapLabel) != 0, !r.request_id.empty());
    EXPECT_FALSE(r.reasons & kTapSampled);
  }

  // Arm 2 leaves the watch: its counts since are taken once more, then forgotten.
  for (int key = 0; key < 24; ++key) {
    ModelInferRequest req = CalcRequest("calc", 1);
    (*req.mutable_parameters())["routing_key"].set_string_param("k" + std::to_string(key));
    ASSERT_TRUE(f.Infer(req, &resp).ok());
  }
  w.arms = {{1, 0.0}};
  w.tap_with_id = false;
  ASSERT_TRUE(f.fe->SetArmWatch("calc", w).ok());
  counts = f.fe->TakeArmCounts();
  ASSERT_EQ(counts.size(), 2u);
  for (const ArmCounts& c : counts) EXPECT_EQ(c.requests, on[c.version]);
  const size_t copied = AwaitRecords(tap, 2 * on[1]).size();
  EXPECT_EQ(copied, 2 * on[1]);
  for (int key = 0; key < 24; ++key) {
    ModelInferRequest req = CalcRequest("calc", 1, true, "id");
    (*req.mutable_parameters())["routing_key"].set_string_param("k" + std::to_string(key));
    ASSERT_TRUE(f.Infer(req, &resp).ok());
  }
  counts = f.fe->TakeArmCounts();
  ASSERT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts[0].version, 1);
  EXPECT_EQ(counts[0].requests, on[1]);  // kept counting into the same arm
  Pause();
  EXPECT_EQ(tap.Records().size(), copied);  // share 0, no label tap: no copies

  ASSERT_TRUE(f.fe->SetArmWatch("calc", std::nullopt).ok());
  ASSERT_TRUE(f.Infer(CalcRequest("calc", 1), &resp).ok());
  EXPECT_TRUE(f.fe->TakeArmCounts().empty());
}

TEST(GrpcServerTest, TheCopyCapBoundsCopiesPerSecond) {
  CollectTap tap;
  Frontend f;
  f.Load("calc", 1);
  ModelPolicy p;
  p.route = SingleVersionPolicy(1, 1);
  ASSERT_TRUE(f.router.Publish("calc", p).ok());
  f.Start({}, nullptr, &tap);
  ArmWatch w;
  w.arms = {{1, 1.0}};
  w.max_copies_per_s = 10;  // one per 100 ms window
  ASSERT_TRUE(f.fe->SetArmWatch("calc", w).ok());
  ModelInferResponse resp;
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(f.Infer(CalcRequest("calc", 1), &resp).ok());
  Pause();
  const size_t copies = tap.Records().size();
  EXPECT_GE(copies, 1u);
  EXPECT_LE(copies, 10u);
  std::vector<ArmCounts> counts = f.fe->TakeArmCounts();
  ASSERT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts[0].requests, 20u);  // counting is never capped
  EXPECT_EQ(counts[0].latency.size(), 1u);  // no bounds: one bucket
}

TEST(GrpcServerTest, ABadArmWatchIsRefused) {
  Frontend f;
  f.Load("calc", 1);
  f.Start();
  ArmWatch w;
  w.latency_bounds_ms = {2.0, 1.0};
  EXPECT_EQ(f.fe->SetArmWatch("calc", w).code(), StatusCode::kInvalidArgument);
  w.latency_bounds_ms = {1.0};
  w.arms = {{1, 1.5}};
  EXPECT_EQ(f.fe->SetArmWatch("calc", w).code(), StatusCode::kInvalidArgument);
  w.arms = {{1, 0.5}};
  w.max_copies_per_s = -1;
  EXPECT_EQ(f.fe->SetArmWatch("calc", w).code(), StatusCode::kInvalidArgument);
}

TEST(GrpcServerTest, StatsCountErrorsByCodeAndModelAndTimeStages) {
  Frontend f;
  f.Load("calc", 1);
  f.Start();
  ModelInferResponse resp;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(f.Infer(CalcRequest("calc", 1), &resp).ok());
  ModelInferRequest bad = CalcRequest("calc", 1);
  bad.mutable_inputs(0)->set_datatype("FP64");
  EXPECT_FALSE(f.Infer(bad, &resp).ok());
  EXPECT_FALSE(f.Infer(CalcRequest("ghost", 1), &resp).ok());
  GrpcFrontendStats s = f.fe->Stats();
  EXPECT_EQ((s.errors[{"grpc", "INVALID_ARGUMENT", "calc"}]), 1u);
  EXPECT_EQ((s.errors[{"grpc", "NOT_FOUND", "_unknown"}]), 1u);
  ASSERT_EQ(s.stages.count({"calc", "1"}), 1u);
  EXPECT_EQ((s.stages[{"calc", "1"}].first.count), 3u);
  EXPECT_EQ((s.stages[{"calc", "1"}].second.count), 3u);
  EXPECT_EQ(s.admission.admitted, 5u);
  EXPECT_EQ(s.admission.in_flight, 0u);
  EXPECT_TRUE(s.admission.adaptive);
  EXPECT_EQ(s.admission.limit, 1024u);
  EXPECT_EQ(s.open_streams, 0u);
}

TEST(GrpcServerTest, BindAndOptionErrors) {
  Frontend f;
  f.Start();
  Engine engine;
  Router router(&engine);
  GrpcFrontendOptions o;
  o.address = "127.0.0.1:" + std::to_string(f.fe->port());  // in use, and SO_REUSEPORT is off
  auto second = GrpcFrontend::Start(&router, &engine, o, nullptr);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(second.status().message(), "gRPC: cannot bind " + o.address);
  o.address = "127.0.0.1:0";
  o.tls_cert_pem = "cert";
  auto tls = GrpcFrontend::Start(&router, &engine, o, nullptr);
  ASSERT_FALSE(tls.ok());
  EXPECT_EQ(tls.status().code(), StatusCode::kInvalidArgument);
  o.tls_cert_pem.clear();
  for (int lanes : {-1, 65}) {
    o.threads = lanes;
    auto bad = GrpcFrontend::Start(&router, &engine, o, nullptr);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.status().message(),
              "GrpcFrontend: threads (lanes) must be 0 (one per 8 cores) to 64, got " + std::to_string(lanes));
  }
}

// A self-signed test certificate for localhost / 127.0.0.1, valid 2000-2999 (test use only).
constexpr char kTestKey[] = R"(-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg9XNUsVaKhVcC9Bm5
yX9yBByc+fyyuPeTLrmtZK9YbTChRANCAATQ8ueCPXSUi046zy1DeTaqDCuTsh2K
srxMkmbVANJszq8Jo2BG7YmSJe8+nfRm8WtG+vWhluo3Vst3qEIxLpyB
-----END PRIVATE KEY-----
)";
constexpr char kTestCert[] = R"(-----BEGIN CERTIFICATE-----
MIIBWzCCAQGgAwIBAgIUEgIRLNlaPnNVOsFWSzNeqvmTbEUwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTAwMDEwMTAwMDAwMFoYDzI5OTkxMjMx
MDAwMDAwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATQ8ueCPXSUi046zy1DeTaqDCuTsh2KsrxMkmbVANJszq8Jo2BG7YmS
Je8+nfRm8WtG+vWhluo3Vst3qEIxLpyBoy8wLTAaBgNVHREEEzARgglsb2NhbGhv
c3SHBH8AAAEwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA5F55
HrEdGqMqgcBl7Qzeuz/T4SoEaeF/LshKPlRQFjkCIFBY+0pmW1sXQh/8JY3Y6tmq
JJezrIIAOZlXUFkaV/88
-----END CERTIFICATE-----
)";

TEST(GrpcServerTest, TlsServesOnlyTlsClients) {
  Engine engine;
  Router router(&engine);
  ASSERT_TRUE(engine.Load(CalcConfig("calc", 1), std::make_shared<CalcBackend>(1)).ok());
  GrpcFrontendOptions o;
  o.address = "127.0.0.1:0";
  o.tls_cert_pem = kTestCert;
  o.tls_key_pem = kTestKey;
  auto fe = GrpcFrontend::Start(&router, &engine, o, nullptr);
  ASSERT_TRUE(fe.ok()) << fe.status().ToString();
  // By address (the certificate names 127.0.0.1 too): no DNS lookup (c-ares leaks under LSan).
  const std::string target = "127.0.0.1:" + std::to_string((*fe)->port());
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = kTestCert;
  auto stub = inference::GRPCInferenceService::NewStub(grpc::CreateChannel(target, grpc::SslCredentials(ssl)));
  grpc::ClientContext ctx;
  ModelInferResponse resp;
  grpc::Status st = stub->ModelInfer(&ctx, CalcRequest("calc", 1), &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.model_name(), "calc");
  auto plain = inference::GRPCInferenceService::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx2;
  ctx2.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  EXPECT_FALSE(plain->ModelInfer(&ctx2, CalcRequest("calc", 1), &resp).ok());
  (*fe)->Shutdown(1);
}

TEST(GrpcServerTest, MessageSizeLimitAndSharedPorts) {
  GrpcFrontendOptions o;
  o.max_message_bytes = 4096;
  o.reuse_port = true;
  Frontend f;
  f.Load("calc", 1);
  f.Start(o);
  ModelInferResponse resp;
  ModelInferRequest big = CalcRequest("calc", 1);
  big.set_id(std::string(5000, 'i'));
  EXPECT_EQ(f.Infer(big, &resp).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // With reuse_port, a second server may bind the same port (a server's workers share it).
  o.address = "127.0.0.1:" + std::to_string(f.fe->port());
  auto second = GrpcFrontend::Start(&f.router, &f.engine, o, nullptr);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ((*second)->port(), f.fe->port());
  (*second)->Shutdown(0);
}

TEST(GrpcServerTest, ShutdownAnswersCallsInFlightWithinGrace) {
  Gate gate(false);
  Frontend f;
  f.Load("calc", 1, &gate, /*max_batch=*/1);
  f.Start();
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 3; ++i) {
    clients.emplace_back([&] {
      ModelInferResponse resp;
      if (f.Infer(CalcRequest("calc", 1), &resp).ok()) ok.fetch_add(1);
    });
  }
  while (f.fe->Stats().admission.in_flight < 3) Pause(5);
  std::thread opener([&] {
    Pause(100);
    gate.Open();
  });
  f.fe->Shutdown(10);
  opener.join();
  for (auto& c : clients) c.join();
  EXPECT_EQ(ok.load(), 3);
}

TEST(GrpcServerTest, ShutdownCancelsWhatOutlivesTheGrace) {
  Gate gate(false);
  Frontend f;
  testing::OpenOnExit open(gate);
  f.Load("calc", 1, &gate, /*max_batch=*/1);
  f.Start();
  std::vector<std::thread> clients;
  for (int i = 0; i < 3; ++i) {
    clients.emplace_back([&] {
      ModelInferResponse resp;
      EXPECT_FALSE(f.Infer(CalcRequest("calc", 1), &resp).ok());
    });
  }
  while (f.fe->Stats().admission.in_flight < 3) Pause(5);
  const auto t0 = std::chrono::steady_clock::now();
  f.fe->Shutdown(0.1);  // the backend is still held: the calls are cancelled, not waited for
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(kSanitized ? 10 : 3));
  for (auto& c : clients) c.join();
  gate.Open();  // the core answers after the frontend is gone: dropped
}

}  // namespace
}  // namespace inferline::grpctest
