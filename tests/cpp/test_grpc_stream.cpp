// The native gRPC frontend's ModelStreamInfer (answers as they complete, errors in-stream, the
// stream limit, the idle timeout, cancellation), admission end to end (a static limit with its
// retry-after-ms trailer, a deadline shorter than the predicted latency), a cancelled unary call
// withdrawing its queued request, and a concurrent mix of unary calls and streams (for TSan).
#include <map>
#include <set>

#include "test_grpc_fixture.h"

namespace inferline::grpctest {
namespace {

using inference::ModelStreamInferResponse;
using StreamPtr = std::unique_ptr<grpc::ClientReaderWriter<ModelInferRequest, ModelStreamInferResponse>>;

TEST(GrpcStreamTest, AnswersComeAsTheyCompleteAndTheStreamEndsAfterTheLast) {
  Gate gate(false);
  Frontend f;
  testing::OpenOnExit open(gate);
  f.Load("slow", 1, &gate, /*max_batch=*/1);
  f.Load("fast", 1);
  f.Start();
  grpc::ClientContext ctx;
  StreamPtr stream = f.stub->ModelStreamInfer(&ctx);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(stream->Write(CalcRequest("slow", 1, true, "slow-" + std::to_string(i))));
  ASSERT_TRUE(stream->Write(CalcRequest("fast", 2, true, "fast")));
  ModelStreamInferResponse resp;
  ASSERT_TRUE(stream->Read(&resp));  // the fast one overtakes the held ones
  EXPECT_EQ(resp.error_message(), "");
  EXPECT_EQ(resp.infer_response().id(), "fast");
  EXPECT_EQ(resp.infer_response().model_name(), "fast");
  EXPECT_EQ(Param(resp.infer_response(), "routed_to"), "fast:1");
  EXPECT_EQ(OutputFloats(resp.infer_response(), "sum").size(), 4u);
  ASSERT_TRUE(stream->WritesDone());
  gate.Open();
  std::set<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.error_message(), "");
    ids.insert(resp.infer_response().id());
    EXPECT_EQ(OutputFloats(resp.infer_response(), "neg")[0], -0.5f);
  }
  EXPECT_EQ(ids, (std::set<std::string>{"slow-0", "slow-1", "slow-2"}));
  EXPECT_FALSE(stream->Read(&resp));
  grpc::Status st = stream->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
}

TEST(GrpcStreamTest, AFailedRequestGetsAnErrorMessageAndTheStreamGoesOn) {
  Frontend f;
  f.Load("calc", 1);
  f.Start();
  grpc::ClientContext ctx;
  StreamPtr stream = f.stub->ModelStreamInfer(&ctx);
  ModelInferRequest bad = CalcRequest("nope", 1, true, "e1");
  bad.set_model_version("");
  ASSERT_TRUE(stream->Write(bad));
  ModelStreamInferResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.error_message(), "model 'nope' is not being served");
  EXPECT_EQ(resp.infer_response().model_name(), "nope");
  EXPECT_EQ(resp.infer_response().id(), "e1");
  EXPECT_EQ(resp.infer_response().outputs_size(), 0);
  ModelInferRequest typo = CalcRequest("calc", 1, true, "e2");
  typo.mutable_inputs(0)->set_datatype("FP16");
  ASSERT_TRUE(stream->Write(typo));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.error_message(), "model 'calc' input 'x': 8 bytes of data for FP16 [1, 2], which needs 4 bytes");
  ASSERT_TRUE(stream->Write(CalcRequest("calc", 1, true, "ok")));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.error_message(), "");
  EXPECT_EQ(resp.infer_response().id(), "ok");
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  GrpcFrontendStats s = f.fe->Stats();
  EXPECT_EQ((s.errors[{"grpc_stream", "NOT_FOUND", "_unknown"}]), 1u);
  EXPECT_EQ((s.errors[{"grpc_stream", "INVALID_ARGUMENT", "calc"}]), 1u);
}

TEST(GrpcStreamTest, StreamsPastTheLimitAreRefused) {
  GrpcFrontendOptions o;
  o.max_streams = 1;
  Frontend f;
  f.Load("calc", 1);
  f.Start(o);
  grpc::ClientContext ctx1, ctx2;
  StreamPtr first = f.stub->ModelStreamInfer(&ctx1);
  ASSERT_TRUE(first->Write(CalcRequest("calc", 1)));
  ModelStreamInferResponse resp;
  ASSERT_TRUE(first->Read(&resp));  // open for sure
  EXPECT_EQ(f.fe->Stats().open_streams, 1u);
  StreamPtr second = f.stub->ModelStreamInfer(&ctx2);
  EXPECT_FALSE(second->Read(&resp));
  grpc::Status st = second->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(st.error_message(),
            "ModelStreamInfer: this worker has 1 streams open, its limit (--max-streams); retry later, or send unary "
            "ModelInfer calls");
  first->WritesDone();
  EXPECT_TRUE(first->Finish().ok());
  for (int i = 0; i < 100 && f.fe->Stats().open_streams != 0; ++i) Pause(5);
  EXPECT_EQ(f.fe->Stats().open_streams, 0u);
}

TEST(GrpcStreamTest, AnIdleStreamIsClosedAndABusyOneIsNot) {
  GrpcFrontendOptions o;
  o.stream_idle_timeout_s = kSanitized ? 1.0 : 0.3;
  Frontend f;
  f.Load("calc", 1);
  f.Start(o);
  grpc::ClientContext busy_ctx, idle_ctx;
  StreamPtr busy = f.stub->ModelStreamInfer(&busy_ctx);
  StreamPtr idle = f.stub->ModelStreamInfer(&idle_ctx);
  ModelStreamInferResponse resp;
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::duration<double>(o.stream_idle_timeout_s * 2)) {
    ASSERT_TRUE(busy->Write(CalcRequest("calc", 1)));
    ASSERT_TRUE(busy->Read(&resp));
    std::this_thread::sleep_for(std::chrono::duration<double>(o.stream_idle_timeout_s / 4));
  }
  EXPECT_FALSE(idle->Read(&resp));
  grpc::Status st = idle->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  char expected[128];
  std::snprintf(expected, sizeof expected,
                "ModelStreamInfer: no request for %g s; stream closed (--stream-idle-timeout)", o.stream_idle_timeout_s);
  EXPECT_EQ(st.error_message(), expected);
  busy->WritesDone();
  EXPECT_TRUE(busy->Finish().ok());
}

TEST(GrpcStreamTest, AStreamWhoseAnswersAreNeverReadIsEndedWithTheReason) {
  GrpcFrontendOptions o;
  o.stream_idle_timeout_s = kSanitized ? 2.0 : 0.5;
  Frontend f;
  f.Start(o);
  grpc::ClientContext ctx;
  StreamPtr stream = f.stub->ModelStreamInfer(&ctx);
  ModelInferRequest echo;  // an error answer that echoes the (long) model name
  echo.set_model_name(std::string(4096, 'm'));
  std::atomic<int> sent{0};
  std::thread writer([&] {
    for (int i = 0; i < 30'000 && stream->Write(echo); ++i) sent.fetch_add(1);
  });
  for (int before = -1; before != sent.load();) {  // until the server stops reading: held back
    before = sent.load();
    Pause(250);
  }
  EXPECT_LT(sent.load(), 30'000) << "the stream was not held back";
  std::this_thread::sleep_for(std::chrono::duration<double>(o.stream_idle_timeout_s * 3));
  ModelStreamInferResponse resp;
  while (stream->Read(&resp)) {
  }
  writer.join();
  grpc::Status st = stream->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(Contains(st.error_message(), "an answer went unread")) << st.error_message();
  EXPECT_TRUE(Contains(st.error_message(), "--stream-idle-timeout")) << st.error_message();
}

TEST(GrpcStreamTest, ACancelledStreamWithdrawsItsQueuedRequests) {
  Gate gate(false);
  Frontend f;
  testing::OpenOnExit open(gate);
  CalcBackend& backend = f.Load("calc", 1, &gate, /*max_batch=*/1);
  f.Start();
  {
    grpc::ClientContext ctx;
    StreamPtr stream = f.stub->ModelStreamInfer(&ctx);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(stream->Write(CalcRequest("calc", 1)));
    while (f.fe->Stats().admission.in_flight < 3) Pause(5);
    ctx.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  Pause(100);  // the server sees the cancellation
  gate.Open();
  while (f.fe->Stats().admission.in_flight != 0) Pause(5);
  StatsSnapshot s = f.engine.Stats("calc").value();
  EXPECT_EQ(backend.runs.load(), 1);  // only the batch that had started
  EXPECT_EQ(s.cancelled, 2u);
}

TEST(GrpcAdmissionE2ETest, AStaticLimitRefusesWithARetryHint) {
  Gate gate(false);
  GrpcFrontendOptions o;
  o.admission.static_limit = 1;
  o.admission.lobby = 0;  // refused at once (test_grpc_lobby.cpp: the lobby)
  Frontend f;
  testing::OpenOnExit open(gate);
  f.Load("calc", 1, &gate);
  f.Start(o);
  std::thread first([&] {
    ModelInferResponse resp;
    EXPECT_TRUE(f.Infer(CalcRequest("calc", 1), &resp).ok());
  });
  while (f.fe->Stats().admission.in_flight < 1) Pause(5);
  ModelInferResponse resp;
  std::multimap<std::string, std::string> trailers;
  grpc::Status st = f.Infer(CalcRequest("calc", 1), &resp, 20000, &trailers);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(st.error_message(), "server overloaded: 1 requests in flight (limit 1); retry after ~1 ms");
  ASSERT_EQ(trailers.count("retry-after-ms"), 1u);
  EXPECT_EQ(trailers.find("retry-after-ms")->second, "1");
  {  // in a stream: an error message, no request named (refused before parsing)
    grpc::ClientContext ctx;
    StreamPtr stream = f.stub->ModelStreamInfer(&ctx);
    ASSERT_TRUE(stream->Write(CalcRequest("calc", 1, true, "x")));
    ModelStreamInferResponse answer;
    ASSERT_TRUE(stream->Read(&answer));
    EXPECT_EQ(answer.error_message(), "server overloaded: 1 requests in flight (limit 1); retry after ~1 ms");
    EXPECT_FALSE(answer.has_infer_response());
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }
  gate.Open();
  first.join();
  GrpcFrontendStats s = f.fe->Stats();
  EXPECT_EQ(s.admission.refused_overload, 2u);
  EXPECT_FALSE(s.admission.adaptive);
  EXPECT_EQ((s.errors[{"grpc", "UNAVAILABLE", ""}]), 1u);
  EXPECT_EQ((s.errors[{"grpc_stream", "UNAVAILABLE", ""}]), 1u);
}

TEST(GrpcAdmissionE2ETest, ADeadlineShorterThanThePredictedLatencyIsRefusedBeforeDecoding) {
  Frontend f;
  CalcBackend& backend = f.Load("calc", 1, nullptr, /*max_batch=*/1);
  // Sanitized builds take milliseconds per call: larger numbers, so that the deadline still
  // reaches the server (and is refused there) rather than expiring in the client.
  backend.sleep_us = kSanitized ? 100'000 : 20'000;
  f.Start();
  ModelInferResponse resp;
  while (f.fe->Stats().admission.latency_ms < (kSanitized ? 50 : 8)) {
    ASSERT_TRUE(f.Infer(CalcRequest("calc", 1), &resp).ok());
  }
  const int runs = backend.runs.load();
  grpc::Status st = f.Infer(CalcRequest("calc", 1), &resp, /*deadline_ms=*/kSanitized ? 20 : 3);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(Contains(st.error_message(), "refused before decoding")) << st.error_message();
  EXPECT_EQ(backend.runs.load(), runs);
  EXPECT_EQ(f.fe->Stats().admission.refused_deadline, 1u);
}

TEST(GrpcAdmissionE2ETest, ACancelledCallWithdrawsItsQueuedRequest) {
  Gate gate(false);
  Frontend f;
  testing::OpenOnExit open(gate);
  CalcBackend& backend = f.Load("calc", 1, &gate, /*max_batch=*/1);
  f.Start();
  std::thread first([&] {
    ModelInferResponse resp;
    EXPECT_TRUE(f.Infer(CalcRequest("calc", 1), &resp).ok());
  });
  while (backend.runs.load() < 1) Pause(5);  // the first batch holds the only executor
  grpc::ClientContext ctx;
  std::thread second([&] {
    ModelInferResponse resp;
    EXPECT_EQ(f.stub->ModelInfer(&ctx, CalcRequest("calc", 1), &resp).error_code(), grpc::StatusCode::CANCELLED);
  });
  while (f.fe->Stats().admission.in_flight < 2) Pause(5);
  ctx.TryCancel();
  second.join();
  Pause(100);  // the server sees the cancellation
  gate.Open();
  first.join();
  while (f.fe->Stats().admission.in_flight != 0) Pause(5);
  EXPECT_EQ(backend.runs.load(), 1);
  EXPECT_EQ(f.engine.Stats("calc").value().cancelled, 1u);
}

class CountingTap final : public RequestTap {
 public:
  void Observe(TapRecord record) noexcept override {
    if (record.result.status.ok() && record.inputs.size() == 2) seen.fetch_add(1);
  }
  std::atomic<int> seen{0};
};

// Several client threads, unary and streaming, while the serving state, tap shares and stats
// change and are read: meant for ThreadSanitizer (tests/sanitize.sh).
// With one lane and with three (completion queues polled by their own threads, each asking for
// calls of every kind): a call's events stay on its lane while answers come from the executors.
class GrpcConcurrencyTest : public ::testing::TestWithParam<int> {};

TEST_P(GrpcConcurrencyTest, UnaryCallsAndStreamsAtOnce) {
  CountingTap tap;
  Frontend f;
  f.Load("calc", 1, nullptr, /*max_batch=*/4);
  GrpcFrontendOptions o;
  o.threads = GetParam();
  f.Start(o, nullptr, &tap);
  f.fe->SetTapShare("calc", 0.5);
  const int kThreads = 3, kCalls = Scaled(150, 6), kStreamed = Scaled(150, 6);
  std::atomic<int> failures{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCalls; ++i) {
        ModelInferResponse resp;
        const int rows = 1 + (i + t) % 3;
        if (!f.Infer(CalcRequest("calc", rows, i % 2 == 0, std::to_string(i)), &resp).ok() ||
            resp.id() != std::to_string(i) || OutputFloats(resp, "sum").size() != static_cast<size_t>(rows * 2)) {
          failures.fetch_add(1);
        }
      }
    });
  }
  for (int s = 0; s < 2; ++s) {
    threads.emplace_back([&] {
      grpc::ClientContext ctx;
      StreamPtr stream = f.stub->ModelStreamInfer(&ctx);
      std::thread writer([&] {
        for (int i = 0; i < kStreamed; ++i) stream->Write(CalcRequest("calc", 1, true, std::to_string(i)));
        stream->WritesDone();
      });
      std::set<std::string> ids;
      ModelStreamInferResponse resp;
      while (stream->Read(&resp)) {
        if (!resp.error_message().empty()) failures.fetch_add(1);
        ids.insert(resp.infer_response().id());
      }
      writer.join();
      if (!stream->Finish().ok() || ids.size() != static_cast<size_t>(kStreamed)) failures.fetch_add(1);
    });
  }
  std::thread meddler([&] {
    for (int i = 0; !stop.load(); ++i) {
      f.fe->SetServing(i % 2 == 0);
      f.fe->SetTapShare("calc", i % 3 == 0 ? 0.0 : 0.5);
      GrpcFrontendStats s = f.fe->Stats();
      (void)s;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  for (auto& t : threads) t.join();
  stop = true;
  meddler.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(f.fe->Stats().admission.in_flight, 0u);
}

INSTANTIATE_TEST_SUITE_P(Lanes, GrpcConcurrencyTest, ::testing::Values(1, 3),
                         [](const ::testing::TestParamInfo<int>& info) { return std::to_string(info.param); });

}  // namespace
}  // namespace inferline::grpctest
