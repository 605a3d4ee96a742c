// Unit tests of the native gRPC frontend's private pieces, against what the Python frontend
// computes: text (repr, quote, float repr, clip_message), admission (the same AIMD steps and
// messages as server/admission.py for the same clock), and the encoder (the same bytes protobuf
// writes for the whole message, with large outputs as zero-copy slices).
#include <gtest/gtest.h>

#include <cstring>

#include "admission.h"
#include "pytext.h"
#include "wire.h"

namespace inferline::grpcfe {
namespace {

TEST(GrpcTextTest, ReprAndQuoteAsPython) {
  EXPECT_EQ(PyRepr("abc"), "'abc'");
  EXPECT_EQ(PyRepr("it's"), "\"it's\"");
  EXPECT_EQ(PyRepr("a'b\"c"), "'a\\'b\"c'");
  EXPECT_EQ(PyRepr("a\nb\t\\"), "'a\\nb\\t\\\\'");
  EXPECT_EQ(PyRepr(std::string("\x01\x7f", 2)), "'\\x01\\x7f'");
  EXPECT_EQ(PyRepr("caf\xc3\xa9"), "'caf\xc3\xa9'");
  EXPECT_EQ(Quote(std::string(250, 'x')), "'" + std::string(200, 'x') + "'... (250 characters)");
  EXPECT_EQ(Quote("short"), "'short'");
}

TEST(GrpcTextTest, FloatReprAsPython) {
  EXPECT_EQ(PyFloatRepr(1.5), "1.5");
  EXPECT_EQ(PyFloatRepr(1.0), "1.0");
  EXPECT_EQ(PyFloatRepr(-0.0), "-0.0");
  EXPECT_EQ(PyFloatRepr(1e16), "1e+16");
  EXPECT_EQ(PyFloatRepr(1e15), "1000000000000000.0");
  EXPECT_EQ(PyFloatRepr(0.0001), "0.0001");
  EXPECT_EQ(PyFloatRepr(0.00001), "1e-05");
  EXPECT_EQ(PyFloatRepr(2.5e-7), "2.5e-07");
  EXPECT_EQ(PyFloatRepr(123456789.123), "123456789.123");
  EXPECT_EQ(PyFloatRepr(1e300), "1e+300");
  EXPECT_EQ(PyFloatRepr(0.1), "0.1");
  EXPECT_EQ(PyFloatRepr(1.0 / 0.0), "inf");
}

TEST(GrpcTextTest, ListsAndProducts) {
  std::vector<int64_t> dims(20);
  for (int i = 0; i < 20; ++i) dims[i] = i;
  EXPECT_EQ(PyIntList(dims.data(), 3), "[0, 1, 2]");
  EXPECT_EQ(PyIntList(dims.data(), 0), "[]");
  EXPECT_EQ(PyIntList(dims.data(), 20, /*elide=*/true), "[0, 1, 2, 3, 4, 5, 6, 7, ..., 12, 13, 14, 15, 16, 17, 18, 19]");
  const int64_t big[] = {int64_t{1} << 62, int64_t{1} << 62};
  EXPECT_EQ(DecimalProduct(big, 2, 8), "170141183460469231731687303715884105728");  // 2^127
  EXPECT_EQ(DecimalProduct(big, 0, 7), "7");
}

TEST(GrpcTextTest, ClipMessageKeepsStartAndEnd) {
  EXPECT_EQ(ClipMessage("short"), "short");
  const std::string exact(1024, 'a');
  EXPECT_EQ(ClipMessage(exact), exact);
  const std::string long_ascii = std::string(2000, 'a') + std::string(1000, 'z');
  EXPECT_EQ(ClipMessage(long_ascii), std::string(768, 'a') + " ...[3000 characters in all]... " + std::string(256, 'z'));
  // 'a' + 1000 x U+00E9: the head's cut falls inside a character, which is dropped ("ignore").
  std::string accents = "a";
  for (int i = 0; i < 1000; ++i) accents += "\xc3\xa9";
  std::string head = "a", tail;
  for (int i = 0; i < 383; ++i) head += "\xc3\xa9";
  for (int i = 0; i < 128; ++i) tail += "\xc3\xa9";
  EXPECT_EQ(ClipMessage(accents), head + " ...[1001 characters in all]... " + tail);
}

// The scenario printed by server/admission.py with the same clock steps (see the test's numbers).
TEST(GrpcAdmissionTest, SameStepsAsThePythonAdmission) {
  double now = 100.0;
  AdmissionOptions o;
  o.initial_limit = 10;
  o.min_limit = 4;
  o.max_limit = 100;
  o.target_ms = 50;
  Admission a(o, [&now] { return now; });
  AdmissionRefusal refusal;
  const uint32_t slow_limits[] = {10, 10, 8};
  const double slow_latency[] = {0.028525000000000404, 0.05298162187500076, 0.07395011805507917};
  for (int w = 0; w < 3; ++w) {
    std::vector<AdmissionToken> tokens(3);
    for (auto& t : tokens) ASSERT_TRUE(a.Admit(std::nullopt, &t, &refusal));
    now += 0.2;
    for (auto& t : tokens) a.Done(t);
    EXPECT_EQ(a.Snapshot().limit, slow_limits[w]);
    EXPECT_NEAR(a.Snapshot().latency_ms, slow_latency[w] * 1000, 1e-9);
  }
  const uint32_t fast_limits[] = {8, 6, 7, 8};
  const char* messages[] = {"server overloaded: 8 requests in flight (limit 8); retry after ~73 ms",
                            "server overloaded: 8 requests in flight (limit 8); retry after ~52 ms",
                            "server overloaded: 6 requests in flight (limit 6); retry after ~38 ms",
                            "server overloaded: 7 requests in flight (limit 7); retry after ~30 ms"};
  for (int w = 0; w < 4; ++w) {
    std::vector<AdmissionToken> tokens;
    AdmissionToken t;
    while (a.Admit(std::nullopt, &t, &refusal)) tokens.push_back(t);
    EXPECT_EQ(refusal.code, StatusCode::kUnavailable);
    EXPECT_EQ(refusal.message, messages[w]);
    EXPECT_GE(refusal.retry_after_ms, 1);
    now += 0.01;
    for (auto& tok : tokens) a.Done(tok);
    now += 0.1;
    EXPECT_EQ(a.Snapshot().limit, fast_limits[w]);
  }
  AdmissionToken t;
  ASSERT_FALSE(a.Admit(0.001, &t, &refusal));
  EXPECT_EQ(refusal.code, StatusCode::kDeadlineExceeded);
  EXPECT_EQ(refusal.retry_after_ms, -1);
  EXPECT_EQ(refusal.message,
            "the deadline (1.0 ms left) is shorter than the predicted latency (6.7 ms); refused before decoding");
  GrpcFrontendStats::Admission s = a.Snapshot();
  EXPECT_NEAR(s.latency_ms, 24.448604519316728, 1e-9);
  EXPECT_EQ(s.admitted, 38u);
  EXPECT_EQ(s.refused_overload, 4u);
  EXPECT_EQ(s.refused_deadline, 1u);
  EXPECT_EQ(s.in_flight, 0u);
}

TEST(GrpcAdmissionTest, StaticLimitNeverMoves) {
  double now = 0;
  AdmissionOptions o;
  o.static_limit = 2;
  Admission a(o, [&now] { return now; });
  AdmissionToken t1, t2, t3;
  AdmissionRefusal refusal;
  ASSERT_TRUE(a.Admit(std::nullopt, &t1, &refusal));
  ASSERT_TRUE(a.Admit(std::nullopt, &t2, &refusal));
  ASSERT_FALSE(a.Admit(std::nullopt, &t3, &refusal));
  EXPECT_EQ(refusal.message, "server overloaded: 2 requests in flight (limit 2); retry after ~1 ms");
  now = 10;  // many windows, latency far over target
  a.Done(t1);
  a.Done(t2);
  EXPECT_EQ(a.Snapshot().limit, 2u);
  EXPECT_FALSE(a.Snapshot().adaptive);
}

std::string Flat(const grpc::ByteBuffer& b, size_t* slices_out = nullptr) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(b.Dump(&slices).ok());
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (slices_out != nullptr) *slices_out = slices.size();
  return out;
}

TEST(GrpcEncodeTest, TheSameBytesAsProtobufWithLargeOutputsUncopied) {
  ModelConfig c;
  c.name = "m";
  c.version = 3;
  c.outputs = {TensorSpec{"small", DataType::kFloat32, Shape{-1, 2}}, TensorSpec{"big", DataType::kUInt8, Shape{-1, 5000}}};
  InferResult r;
  r.answered_model = "m";
  r.answered_version = 3;
  r.outputs.push_back(Tensor::Allocate(DataType::kFloat32, Shape{1, 2}));
  static_cast<float*>(r.outputs[0].data)[0] = 1.5f;
  static_cast<float*>(r.outputs[0].data)[1] = -2.0f;
  r.outputs.push_back(Tensor::Allocate(DataType::kUInt8, Shape{1, 5000}));
  std::memset(r.outputs[1].data, 7, 5000);
  Answered a{&c, &r, "id-1", nullptr};

  inference::ModelInferResponse expected;
  expected.set_model_name("m");
  expected.set_model_version("3");
  expected.set_id("id-1");
  (*expected.mutable_parameters())["routed_to"].set_string_param("m:3");
  for (size_t i = 0; i < 2; ++i) {
    auto* o = expected.add_outputs();
    o->set_name(c.outputs[i].name);
    o->set_datatype(i == 0 ? "FP32" : "UINT8");
    o->add_shape(1);
    o->add_shape(i == 0 ? 2 : 5000);
    expected.add_raw_output_contents(std::string(static_cast<const char*>(r.outputs[i].data), r.outputs[i].ByteSize()));
  }
  size_t slices = 0;
  EXPECT_EQ(Flat(EncodeResponse(a, false), &slices), expected.SerializeAsString());
  EXPECT_EQ(slices, 2u);  // metadata + small output, then the big output's own memory

  inference::ModelStreamInferResponse stream;
  *stream.mutable_infer_response() = expected;
  EXPECT_EQ(Flat(EncodeResponse(a, true)), stream.SerializeAsString());

  std::vector<int> only_big = {1};
  a.selection = &only_big;
  inference::ModelInferResponse picked;
  ASSERT_TRUE(picked.ParseFromString(Flat(EncodeResponse(a, false))));
  ASSERT_EQ(picked.outputs_size(), 1);
  EXPECT_EQ(picked.outputs(0).name(), "big");
  EXPECT_EQ(picked.raw_output_contents(0), std::string(5000, '\x07'));

  r.fallback_reason = FallbackReason::kDeadline;
  a.selection = nullptr;
  ASSERT_TRUE(picked.ParseFromString(Flat(EncodeResponse(a, false))));
  EXPECT_EQ(picked.parameters().at("fallback_reason").string_param(), "deadline");
}

TEST(GrpcEncodeTest, StreamErrorsNameTheirRequestWhenItWasRead) {
  inference::ModelStreamInferResponse out;
  ASSERT_TRUE(out.ParseFromString(Flat(EncodeStreamError("bad", nullptr))));
  EXPECT_EQ(out.error_message(), "bad");
  EXPECT_FALSE(out.has_infer_response());
  inference::ModelInferRequest req;
  req.set_model_name("m");
  req.set_model_version("2");
  req.set_id("r9");
  ASSERT_TRUE(out.ParseFromString(Flat(EncodeStreamError("bad", &req))));
  EXPECT_EQ(out.infer_response().model_name(), "m");
  EXPECT_EQ(out.infer_response().model_version(), "2");
  EXPECT_EQ(out.infer_response().id(), "r9");
}

}  // namespace
}  // namespace inferline::grpcfe
