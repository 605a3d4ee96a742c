// Shared by the native gRPC frontend tests (test_grpc_*.cpp): an Engine + Router with small C++
// backends, a GrpcFrontend on a free port, a client (the generated stub and a generic stub for
// raw bytes) and request builders.
//
// Model "calc" (version 1, and 2 when asked): inputs x: FP32 [-1, 2], k: INT8 [-1, 1]; outputs
// sum = x + k (FP32 [-1, 2]), neg = -x (FP32 [-1, 2]), wide: UINT8 [-1, kWide] (row r filled with
// r + version, large enough to leave as a zero-copy slice). Its backend can wait at a gate,
// sleep, or fail every batch.
#pragma once

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <set>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "health.grpc.pb.h"
#include "inference.grpc.pb.h"
#include "inferline/engine.h"
#include "inferline/grpc_frontend.h"
#include "inferline/router.h"
#include "test_util.h"
#include "tsan.h"

namespace inferline::grpctest {

using testing::Gate;
using testing::kSanitized;
using testing::Scaled;

inline constexpr int64_t kWide = 6000;  // bytes per row of output `wide`

inline bool Contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
inline void Pause(int ms = 50) { std::this_thread::sleep_for(std::chrono::milliseconds(kSanitized ? ms * 4 : ms)); }

class CalcBackend final : public Backend {
 public:
  explicit CalcBackend(int64_t version, Gate* gate = nullptr) : version_(version), gate_(gate) {}
  Status Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) override {
    runs.fetch_add(1);
    if (gate_ != nullptr && !gate_->Pass()) return Internal("gate stayed closed");
    if (int us = sleep_us.load(); us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
    if (fail.load()) return Internal("calc failing on purpose");
    const Tensor& x = inputs.at(0).tensor;
    const Tensor& k = inputs.at(1).tensor;
    const int64_t rows = x.shape.dims[0];
    Tensor sum = Tensor::Allocate(DataType::kFloat32, Shape{rows, 2});
    Tensor neg = Tensor::Allocate(DataType::kFloat32, Shape{rows, 2});
    Tensor wide = Tensor::Allocate(DataType::kUInt8, Shape{rows, kWide});
    const auto* xs = static_cast<const float*>(x.data);
    const auto* ks = static_cast<const int8_t*>(k.data);
    {
      std::lock_guard<std::mutex> lock(mu_);
      firsts_.push_back(xs[0]);
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int c = 0; c < 2; ++c) {
        static_cast<float*>(sum.data)[r * 2 + c] = xs[r * 2 + c] + ks[r];
        static_cast<float*>(neg.data)[r * 2 + c] = -xs[r * 2 + c];
      }
      std::memset(static_cast<uint8_t*>(wide.data) + r * kWide, static_cast<int>((r + version_) & 0xFF), kWide);
    }
    outputs->push_back({"sum", std::move(sum)});
    outputs->push_back({"neg", std::move(neg)});
    outputs->push_back({"wide", std::move(wide)});
    return Status::Ok();
  }
  std::atomic<int> runs{0};
  std::atomic<bool> fail{false};
  std::atomic<int> sleep_us{0};
  // x[0][0] of every batch computed, in order.
  std::vector<float> Firsts() {
    std::lock_guard<std::mutex> lock(mu_);
    return firsts_;
  }

 private:
  std::mutex mu_;
  std::vector<float> firsts_;
  int64_t version_;
  Gate* gate_;
};

inline ModelConfig CalcConfig(const std::string& name, int64_t version, uint32_t max_batch = 8) {
  ModelConfig c;
  c.name = name;
  c.version = version;
  c.inputs = {TensorSpec{"x", DataType::kFloat32, Shape{-1, 2}}, TensorSpec{"k", DataType::kInt8, Shape{-1, 1}}};
  c.outputs = {TensorSpec{"sum", DataType::kFloat32, Shape{-1, 2}}, TensorSpec{"neg", DataType::kFloat32, Shape{-1, 2}},
               TensorSpec{"wide", DataType::kUInt8, Shape{-1, kWide}}};
  c.batching.max_batch_size = max_batch;
  c.batching.max_queue_delay_us = 0;
  c.priority_levels = 3;
  return c;
}

using inference::ModelInferRequest;
using inference::ModelInferResponse;

// A request for `rows` rows of calc: x[r] = {r + 0.5, -r}, k[r] = r + 1; raw or typed contents.
inline ModelInferRequest CalcRequest(const std::string& model, int rows, bool raw = true, const std::string& id = "") {
  ModelInferRequest req;
  req.set_model_name(model);
  req.set_id(id);
  std::vector<float> x;
  std::vector<int8_t> k;
  for (int r = 0; r < rows; ++r) {
    x.push_back(r + 0.5f);
    x.push_back(-static_cast<float>(r));
    k.push_back(static_cast<int8_t>(r + 1));
  }
  auto* tx = req.add_inputs();
  tx->set_name("x");
  tx->set_datatype("FP32");
  tx->add_shape(rows);
  tx->add_shape(2);
  auto* tk = req.add_inputs();
  tk->set_name("k");
  tk->set_datatype("INT8");
  tk->add_shape(rows);
  tk->add_shape(1);
  if (raw) {
    req.add_raw_input_contents(std::string(reinterpret_cast<const char*>(x.data()), x.size() * sizeof(float)));
    req.add_raw_input_contents(std::string(reinterpret_cast<const char*>(k.data()), k.size()));
  } else {
    for (float v : x) tx->mutable_contents()->add_fp32_contents(v);
    for (int8_t v : k) tk->mutable_contents()->add_int_contents(v);
  }
  return req;
}

// CalcRequest with x[0][0] = x0 (to tell requests apart in CalcBackend::Firsts).
inline ModelInferRequest CalcRequestX0(const std::string& model, float x0, const std::string& id = "") {
  ModelInferRequest req = CalcRequest(model, 1, true, id);
  std::memcpy(req.mutable_raw_input_contents(0)->data(), &x0, sizeof x0);
  return req;
}

// Output `name` of a response as floats (raw contents, matched by position).
inline std::vector<float> OutputFloats(const ModelInferResponse& resp, const std::string& name) {
  for (int i = 0; i < resp.outputs_size(); ++i) {
    if (resp.outputs(i).name() != name) continue;
    const std::string& raw = resp.raw_output_contents(i);
    std::vector<float> out(raw.size() / sizeof(float));
    std::memcpy(out.data(), raw.data(), out.size() * sizeof(float));
    return out;
  }
  ADD_FAILURE() << "no output " << name;
  return {};
}

inline std::string Param(const ModelInferResponse& resp, const std::string& key) {
  auto it = resp.parameters().find(key);
  return it == resp.parameters().end() ? "<none>" : it->second.string_param();
}

// A frontend over its own engine and router, with a client. Members are destroyed in reverse:
// the client, the frontend (Shutdown), the router, then the engine.
struct Frontend {
  Engine engine;
  Router router{&engine};
  std::vector<std::shared_ptr<CalcBackend>> backends;
  std::unique_ptr<GrpcFrontend> fe;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub;

  CalcBackend& Load(const std::string& name, int64_t version, Gate* gate = nullptr, uint32_t max_batch = 8,
                    uint32_t queue_capacity = 4096) {
    auto b = std::make_shared<CalcBackend>(version, gate);
    ModelConfig c = CalcConfig(name, version, max_batch);
    c.queue_capacity = queue_capacity;
    EXPECT_TRUE(engine.Load(c, b).ok());
    backends.push_back(b);
    return *b;
  }
  void Start(GrpcFrontendOptions options = {}, ControlHandler* control = nullptr, RequestTap* tap = nullptr) {
    options.address = "127.0.0.1:0";
    auto started = GrpcFrontend::Start(&router, &engine, options, control, tap);
    ASSERT_TRUE(started.ok()) << started.status().ToString();
    fe = std::move(started).value();
    ASSERT_GT(fe->port(), 0);
    channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(fe->port()), grpc::InsecureChannelCredentials());
    stub = inference::GRPCInferenceService::NewStub(channel);
  }
  ~Frontend() {
    stub.reset();
    channel.reset();
    if (fe) fe->Shutdown(1);
    fe.reset();
  }

  grpc::Status Infer(const ModelInferRequest& req, ModelInferResponse* resp, int deadline_ms = 20000,
                     std::multimap<std::string, std::string>* trailers = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
    grpc::Status st = stub->ModelInfer(&ctx, req, resp);
    if (trailers != nullptr) {
      for (const auto& [k, v] : ctx.GetServerTrailingMetadata()) trailers->emplace(std::string(k.data(), k.size()), std::string(v.data(), v.size()));
    }
    return st;
  }

  // A unary call of `method` with `request` as raw bytes (any service).
  grpc::Status RawCall(const std::string& method, const std::string& request, std::string* response,
                       grpc::ClientContext* ctx = nullptr) {
    grpc::ClientContext local;
    if (ctx == nullptr) ctx = &local;
    grpc::GenericStub generic(channel);
    grpc::Slice slice(request);
    grpc::ByteBuffer req(&slice, 1), resp;
    std::promise<grpc::Status> done;
    grpcfe::HandOff(&done);  // gRPC passes the call to its thread (see csrc/frontend/src/tsan.h)
    generic.UnaryCall(ctx, method, grpc::StubOptions(), &req, &resp, [&done](grpc::Status s) {
      grpcfe::TakeOver(&done);
      done.set_value(s);
    });
    grpc::Status st = done.get_future().get();
    std::vector<grpc::Slice> slices;
    if (st.ok() && resp.Dump(&slices).ok()) {
      for (const auto& s : slices) response->append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    return st;
  }
};

// Loads "primary", which fails every request, and "backup", which answers; publishes primary's
// policy with backup as its fallback; then starts the frontend.
inline void StartPrimaryFallingBack(Frontend& f) {
  f.Load("primary", 1).fail = true;
  f.Load("backup", 1);
  ModelPolicy p;
  p.route = SingleVersionPolicy(1, 1);
  p.route.fallback = {{"backup", 0}};
  ASSERT_TRUE(f.router.Publish("primary", p).ok());
  f.Start();
}

}  // namespace inferline::grpctest
