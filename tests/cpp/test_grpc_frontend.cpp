// The native gRPC frontend's unary ModelInfer over a real Engine/Router, through the generated
// client stub: raw and typed contents, input order, the outputs filter, request parameters,
// routing (explicit versions, routing keys, a fallback chain), the error codes and messages the
// Python frontend gives, and malformed bytes.
#include "test_grpc_fixture.h"

namespace inferline::grpctest {
namespace {

class GrpcUnaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    f.Load("calc", 1);
    f.Start();
  }
  Frontend f;
};

void ExpectCalcOutputs(const ModelInferResponse& resp, int rows, int64_t version = 1) {
  ASSERT_EQ(resp.outputs_size(), 3);
  ASSERT_EQ(resp.raw_output_contents_size(), 3);
  EXPECT_EQ(resp.outputs(0).name(), "sum");
  EXPECT_EQ(resp.outputs(0).datatype(), "FP32");
  EXPECT_EQ(resp.outputs(2).datatype(), "UINT8");
  ASSERT_EQ(resp.outputs(0).shape_size(), 2);
  EXPECT_EQ(resp.outputs(0).shape(0), rows);
  std::vector<float> sum = OutputFloats(resp, "sum"), neg = OutputFloats(resp, "neg");
  ASSERT_EQ(sum.size(), static_cast<size_t>(rows * 2));
  for (int r = 0; r < rows; ++r) {
    EXPECT_EQ(sum[r * 2], r + 0.5f + (r + 1));
    EXPECT_EQ(sum[r * 2 + 1], -static_cast<float>(r) + (r + 1));
    EXPECT_EQ(neg[r * 2], -(r + 0.5f));
  }
  const std::string& wide = resp.raw_output_contents(2);
  ASSERT_EQ(wide.size(), static_cast<size_t>(rows * kWide));
  for (int r = 0; r < rows; ++r) EXPECT_EQ(static_cast<uint8_t>(wide[r * kWide + kWide - 1]), (r + version) & 0xFF);
}

TEST_F(GrpcUnaryTest, RawContentsAnswerWithEveryOutputAndWhoAnswered) {
  ModelInferResponse resp;
  grpc::Status st = f.Infer(CalcRequest("calc", 3, true, "req-7"), &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.model_name(), "calc");
  EXPECT_EQ(resp.model_version(), "1");
  EXPECT_EQ(resp.id(), "req-7");
  EXPECT_EQ(Param(resp, "routed_to"), "calc:1");
  EXPECT_EQ(Param(resp, "fallback_reason"), "<none>");
  ExpectCalcOutputs(resp, 3);
}

TEST_F(GrpcUnaryTest, TypedContentsAndInputsInAnyOrder) {
  ModelInferRequest req = CalcRequest("calc", 2, /*raw=*/false);
  req.mutable_inputs()->SwapElements(0, 1);  // k first: converted to the config's order
  ModelInferResponse resp;
  grpc::Status st = f.Infer(req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ExpectCalcOutputs(resp, 2);
}

TEST_F(GrpcUnaryTest, MisalignedRawBytesAreCopiedOnce) {
  // Raw contents are parsed into strings; a 1-byte shifted view is never handed to the core.
  ModelInferRequest req = CalcRequest("calc", 4);
  ModelInferResponse resp;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(f.Infer(req, &resp).ok());
  ExpectCalcOutputs(resp, 4);
}

TEST_F(GrpcUnaryTest, OutputsAreFilteredAndOrderedAsRequested) {
  ModelInferRequest req = CalcRequest("calc", 2);
  req.add_outputs()->set_name("neg");
  req.add_outputs()->set_name("sum");
  ModelInferResponse resp;
  ASSERT_TRUE(f.Infer(req, &resp).ok());
  ASSERT_EQ(resp.outputs_size(), 2);
  EXPECT_EQ(resp.outputs(0).name(), "neg");
  EXPECT_EQ(resp.outputs(1).name(), "sum");
  EXPECT_EQ(OutputFloats(resp, "neg")[0], -0.5f);
  EXPECT_EQ(OutputFloats(resp, "sum")[0], 1.5f);
}

grpc::Status InferWith(Frontend& f, ModelInferRequest req) {
  ModelInferResponse resp;
  return f.Infer(req, &resp);
}

void ExpectError(const grpc::Status& st, grpc::StatusCode code, const std::string& message) {
  EXPECT_EQ(st.error_code(), code) << st.error_message();
  EXPECT_EQ(st.error_message(), message);
}

TEST_F(GrpcUnaryTest, RequestParameters) {
  ModelInferRequest req = CalcRequest("calc", 1);
  (*req.mutable_parameters())["priority"].set_int64_param(1);
  (*req.mutable_parameters())["timeout"].set_uint64_param(5'000'000);
  (*req.mutable_parameters())["sequence_id"].set_int64_param(0);
  (*req.mutable_parameters())["routing_key"].set_string_param("user-7");
  (*req.mutable_parameters())["custom"].set_bool_param(true);  // other parameters are ignored
  EXPECT_TRUE(InferWith(f, req).ok());

  ModelInferRequest bad = CalcRequest("calc", 1);
  (*bad.mutable_parameters())["priority"].set_string_param("high");
  ExpectError(InferWith(f, bad), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc' parameter 'priority': expected a non-negative integer, got string_param 'high'");
  bad = CalcRequest("calc", 1);
  (*bad.mutable_parameters())["priority"].set_int64_param(-2);
  ExpectError(InferWith(f, bad), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc' parameter 'priority': expected a non-negative integer, got int64_param -2");
  bad = CalcRequest("calc", 1);
  (*bad.mutable_parameters())["timeout"].set_double_param(1.5);
  ExpectError(InferWith(f, bad), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc' parameter 'timeout': expected microseconds as int64, got double_param 1.5");
  bad = CalcRequest("calc", 1);
  (*bad.mutable_parameters())["sequence_id"].set_uint64_param(42);
  ExpectError(InferWith(f, bad), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc': sequences (sequence_id 42) are not supported");
  bad = CalcRequest("calc", 1);
  (*bad.mutable_parameters())["routing_key"].set_int64_param(3);
  ExpectError(InferWith(f, bad), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc' parameter 'routing_key': expected a string_param, got int64_param");
}

TEST_F(GrpcUnaryTest, KServePriorityOneIsServedFirst) {
  Gate gate(false);
  Frontend g;
  testing::OpenOnExit open(gate);
  CalcBackend& backend = g.Load("prio", 1, &gate, /*max_batch=*/1);  // 3 core levels
  g.Start();
  std::vector<std::thread> calls;
  auto send = [&](float x0, int64_t priority) {
    calls.emplace_back([&g, x0, priority] {
      ModelInferRequest req = CalcRequestX0("prio", x0);
      (*req.mutable_parameters())["priority"].set_int64_param(priority);
      EXPECT_TRUE(InferWith(g, req).ok());
    });
  };
  send(100, 0);  // takes the executor and waits at the gate
  while (backend.runs.load() < 1) Pause(5);
  send(200, 0);  // default: the lowest level
  while (g.fe->Stats().admission.in_flight < 2) Pause(5);
  send(300, 2);  // level 1
  while (g.fe->Stats().admission.in_flight < 3) Pause(5);
  send(400, 1);  // highest: level 2
  while (g.fe->Stats().admission.in_flight < 4) Pause(5);
  Pause(50);  // the last request reaches the core's queue
  gate.Open();
  for (auto& c : calls) c.join();
  EXPECT_EQ(backend.Firsts(), (std::vector<float>{100, 400, 300, 200}));
}

TEST_F(GrpcUnaryTest, TimeoutParameterIsTheCoresDeadline) {
  Gate gate(false);
  Frontend g;
  g.Load("slow", 1, &gate);
  g.Start();
  ModelInferRequest req = CalcRequest("slow", 1);
  (*req.mutable_parameters())["timeout"].set_int64_param(1000);  // 1 ms: expires while the first batch waits
  ModelInferRequest first = CalcRequest("slow", 1);
  std::thread t([&] { EXPECT_TRUE(InferWith(g, first).ok()); });
  Pause();
  ModelInferResponse resp;
  std::thread opener([&] {
    Pause(100);
    gate.Open();
  });
  grpc::Status st = g.Infer(req, &resp);
  opener.join();
  t.join();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
}

TEST_F(GrpcUnaryTest, ExplicitVersionsAndVersionErrors) {
  Frontend g;
  g.Load("calc", 1);
  g.Load("calc", 2);
  g.Start();
  ModelInferRequest req = CalcRequest("calc", 2);
  ModelInferResponse resp;
  ASSERT_TRUE(g.Infer(req, &resp).ok());
  EXPECT_EQ(resp.model_version(), "2");  // no policy: the latest
  ExpectCalcOutputs(resp, 2, 2);
  req.set_model_version("1");
  ASSERT_TRUE(g.Infer(req, &resp).ok());
  EXPECT_EQ(resp.model_version(), "1");
  EXPECT_EQ(Param(resp, "routed_to"), "calc:1");
  req.set_model_version("abc");
  ExpectError(InferWith(g, req), grpc::StatusCode::NOT_FOUND, "model 'calc': version 'abc' is not a number");
  req.set_model_version("9");  // Python's routing wording (routing/router.py)
  ExpectError(InferWith(g, req), grpc::StatusCode::NOT_FOUND, "model 'calc' version 9 is not being served (serving: 1, 2)");
  req.set_model_version("-1");
  ExpectError(InferWith(g, req), grpc::StatusCode::NOT_FOUND, "model 'calc' version -1 is not being served (serving: 1, 2)");
  req.set_model_version("0");
  ExpectError(InferWith(g, req), grpc::StatusCode::NOT_FOUND, "model 'calc' version 0 is not being served (serving: 1, 2)");
}

TEST_F(GrpcUnaryTest, RoutingKeysPickTheSameVersionEveryTime) {
  Frontend g;
  g.Load("calc", 1);
  g.Load("calc", 2);
  ModelPolicy p;
  p.route.epoch = 1;
  p.route.arms = {{1, 0, 5000}, {2, 5000, kRouteBuckets}};
  ASSERT_TRUE(g.router.Publish("calc", p).ok());
  g.Start();
  std::set<std::string> seen;
  for (int key = 0; key < 20; ++key) {
    ModelInferRequest req = CalcRequest("calc", 1);
    (*req.mutable_parameters())["routing_key"].set_string_param("user-" + std::to_string(key));
    const int64_t expected = RouteBucket(HashRoutingKey("user-" + std::to_string(key))) < 5000 ? 1 : 2;
    for (int rep = 0; rep < 2; ++rep) {
      ModelInferResponse resp;
      ASSERT_TRUE(g.Infer(req, &resp).ok());
      EXPECT_EQ(resp.model_version(), std::to_string(expected));
      seen.insert(resp.model_version());
    }
  }
  EXPECT_EQ(seen.size(), 2u);
}

TEST_F(GrpcUnaryTest, AFallbackAnswersWhenThePrimaryFails) {
  Frontend g;
  ASSERT_NO_FATAL_FAILURE(StartPrimaryFallingBack(g));
  ModelInferResponse resp;
  grpc::Status st = g.Infer(CalcRequest("primary", 2, true, "fb"), &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.model_name(), "backup");
  EXPECT_EQ(resp.model_version(), "1");
  EXPECT_EQ(resp.id(), "fb");
  EXPECT_EQ(Param(resp, "routed_to"), "backup:1");
  EXPECT_EQ(Param(resp, "fallback_reason"), "error");
  ExpectCalcOutputs(resp, 2);
}

TEST_F(GrpcUnaryTest, CoreErrorsKeepTheirCodes) {
  ModelInferRequest req = CalcRequest("nope", 1);
  grpc::Status st = InferWith(f, req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "model 'nope' is not being served");

  req = CalcRequest("calc", 2);
  req.mutable_inputs(0)->set_datatype("FP64");  // 16 bytes for [2, 2] FP64 do not fit
  st = InferWith(f, req);
  ExpectError(st, grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc' input 'x': 16 bytes of data for FP64 [2, 2], which needs 32 bytes");

  req = CalcRequest("calc", 2);
  req.mutable_inputs(0)->set_datatype("INT32");  // same size, wrong dtype: the core says so
  st = InferWith(f, req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(st.error_message(), "model 'calc' version 1")) << st.error_message();
  EXPECT_TRUE(Contains(st.error_message(), "'x'")) << st.error_message();

  req = CalcRequest("calc", 2);
  req.mutable_inputs(0)->clear_shape();  // [4, 1]: same bytes, wrong shape
  req.mutable_inputs(0)->add_shape(4);
  req.mutable_inputs(0)->add_shape(1);
  st = InferWith(f, req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Contains(st.error_message(), "'x'")) << st.error_message();

  f.backends[0]->fail = true;
  st = InferWith(f, CalcRequest("calc", 1));
  ExpectError(st, grpc::StatusCode::INTERNAL, "model 'calc' version 1: backend failed: calc failing on purpose");
  f.backends[0]->fail = false;
}

TEST_F(GrpcUnaryTest, NamesAndOutputsAreChecked) {
  ModelInferRequest req = CalcRequest("calc", 1);
  req.mutable_inputs(1)->set_name("kk");
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc' version 1: unknown input 'kk'; input 'k': missing from the request (inputs: x, k)");
  req = CalcRequest("calc", 1);
  req.mutable_inputs(1)->set_name("x");
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT, "model 'calc' version 1 input 'x': given twice");
  req = CalcRequest("calc", 1);
  req.add_outputs()->set_name("nope");
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc' version 1: unknown output 'nope' (outputs: sum, neg, wide)");
  req = CalcRequest("calc", 1);
  req.add_outputs()->set_name("sum");
  req.add_outputs()->set_name("sum");
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc' output 'sum': requested twice (name each output at most once)");
  req = CalcRequest("calc", 1);
  (*req.add_outputs()->mutable_parameters())["classification"].set_int64_param(2);
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc' output '': the classification and shared-memory extensions are not supported");
  req = CalcRequest("calc", 1);
  for (int i = 0; i < 17; ++i) req.add_outputs()->set_name("o" + std::to_string(i));
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc': 17 outputs requested, but it has 3 (name each output at most once)");
  req.set_model_name("nope");  // a long list needs the model first
  EXPECT_EQ(InferWith(f, req).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(GrpcUnaryTest, MalformedTensorsAreRefusedAsPythonDoes) {
  const std::string where = "model 'calc' input 'x'";
  ModelInferRequest req = CalcRequest("calc", 1);
  req.add_raw_input_contents("extra");
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc': 3 raw_input_contents for 2 inputs (give one per input, in the order of `inputs`)");
  req = CalcRequest("calc", 1);
  req.mutable_inputs(0)->mutable_contents()->add_fp32_contents(1);
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT, where + ": has both contents and raw_input_contents");
  req = CalcRequest("calc", 1);
  (*req.mutable_inputs(0)->mutable_parameters())["shared_memory_region"].set_string_param("r");
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT,
              where + ": shared memory is not supported; send the data in the request");
  req = CalcRequest("calc", 1, /*raw=*/false);
  req.mutable_inputs(0)->set_datatype("BYTES");
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT, where + ": unsupported datatype 'BYTES'");
  req = CalcRequest("calc", 1, false);
  req.mutable_inputs(0)->set_datatype("FP16");
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT, where + ": FP16 data must be sent in raw_input_contents");
  req = CalcRequest("calc", 1, false);
  req.mutable_inputs(0)->clear_contents();
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT,
              where + ": no data (send raw_input_contents or contents.fp32_contents)");
  req = CalcRequest("calc", 1, false);
  req.mutable_inputs(1)->mutable_contents()->set_int_contents(0, 300);
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc' input 'k': data does not fit INT8: Python integer 300 out of bounds for int8");
  req = CalcRequest("calc", 1, false);
  req.mutable_inputs(0)->mutable_contents()->add_fp32_contents(3);
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT, where + ": 3 values for FP32 [1, 2], which needs 2");
  req = CalcRequest("calc", 1);
  req.mutable_inputs(0)->set_shape(0, -1);
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT, where + ": shape [-1, 2] has a negative dimension");
  req = CalcRequest("calc", 1);
  for (int i = 0; i < 63; ++i) req.mutable_inputs(0)->add_shape(1);
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT, where + ": shape has 65 dimensions (at most 64)");
  req = CalcRequest("calc", 1);
  req.mutable_inputs(0)->set_shape(1, int64_t{1} << 62);
  req.mutable_inputs(0)->add_shape(1 << 20);
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT,
              where + ": 8 bytes of data for FP32 [1, 4611686018427387904, 1048576], which needs "
                      "19342813113834066795298816 bytes");
  req = CalcRequest("calc", 1);
  for (int i = 0; i < 8; ++i) req.mutable_inputs(0)->add_shape(1);  // 10 dims: a Shape holds 8
  ExpectError(InferWith(f, req), grpc::StatusCode::INVALID_ARGUMENT,
              "model 'calc' version 1 input 'x': expected shape [-1, 2], got 10 dimensions");
}

TEST_F(GrpcUnaryTest, MalformedBytesAreInvalidArgument) {
  std::string out;
  grpc::Status st = f.RawCall("/inference.GRPCInferenceService/ModelInfer", std::string("\xff\xff\xff", 3), &out);
  ExpectError(st, grpc::StatusCode::INVALID_ARGUMENT,
              "malformed request message: Error parsing message with type 'inferline.kserve.ModelInferRequest'");
  GrpcFrontendStats s = f.fe->Stats();
  EXPECT_EQ((s.errors[{"grpc", "INVALID_ARGUMENT", ""}]), 1u);  // no model name was read
}

TEST_F(GrpcUnaryTest, LongMessagesAreClipped) {
  ModelInferRequest req = CalcRequest(std::string(3000, 'm'), 1);
  grpc::Status st = InferWith(f, req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_LT(st.error_message().size(), 1100u);
  EXPECT_TRUE(Contains(st.error_message(), " characters in all]... ")) << st.error_message();
}

}  // namespace
}  // namespace inferline::grpctest
