// The native gRPC frontend beyond inference: calls handed to the control plane (method,
// metadata, bytes, replies and error codes, a control plane that never answers), health Check
// and Watch, ServerLive/Ready and server reflection.
#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/generic/generic_stub.h>

#include <google/protobuf/descriptor.pb.h>

#include <cctype>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>

#include "test_grpc_fixture.h"

namespace inferline::grpctest {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// Records every call; answers at once with `reply`, from another thread, or never (held).
class TestControl final : public ControlHandler {
 public:
  enum class Mode { kInline, kThread, kHold };
  ~TestControl() override {
    for (auto& t : threads_) t.join();
  }
  void Set(Mode m, ControlReply r) {
    std::lock_guard<std::mutex> lock(mu_);
    mode_ = m;
    reply_ = std::move(r);
  }
  void Handle(ControlCall call, std::function<void(ControlReply)> done) override {
    std::unique_lock<std::mutex> lock(mu_);
    calls.push_back(std::move(call));
    cv_.notify_all();
    if (mode_ == Mode::kInline) {
      ControlReply r = reply_;
      lock.unlock();
      done(std::move(r));
    } else if (mode_ == Mode::kThread) {
      threads_.emplace_back([done, r = reply_] {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        done(r);
      });
    } else {
      held.push_back(std::move(done));
    }
  }
  bool WaitForCalls(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, testing::kWaitTimeout, [&] { return calls.size() >= n; });
  }
  std::vector<ControlCall> Calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls;
  }
  std::vector<std::function<void(ControlReply)>> TakeHeld() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::move(held);
  }


 private:
  std::mutex mu_;
  Mode mode_ = Mode::kInline;  // requires mu_
  ControlReply reply_;         // requires mu_
  std::condition_variable cv_;
  std::vector<ControlCall> calls;
  std::vector<std::function<void(ControlReply)>> held;
  std::vector<std::thread> threads_;
};

std::string MetadataValue(const ControlCall& call, const std::string& key) {
  for (const auto& [k, v] : call.metadata) {
    if (k == key) return v;
  }
  return "<none>";
}

TEST(GrpcControlTest, CallsCarryMethodMetadataBytesAndReplies) {
  TestControl control;
  inference::ModelMetadataResponse meta;
  meta.set_name("calc");
  meta.add_versions("1");
  ControlReply reply;
  reply.response = meta.SerializeAsString();
  reply.trailers = {{"x-served-by", "python"}};
  Frontend f;
  f.Load("calc", 1);
  f.Start({}, &control);
  for (auto mode : {TestControl::Mode::kInline, TestControl::Mode::kThread}) {
    control.Set(mode, reply);
    inference::ModelMetadataRequest req;
    req.set_name("calc");
    req.set_version("1");
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer s3cret");
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    inference::ModelMetadataResponse resp;
    grpc::Status st = f.stub->ModelMetadata(&ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.name(), "calc");
    ASSERT_EQ(resp.versions_size(), 1);
    auto trailers = ctx.GetServerTrailingMetadata();
    ASSERT_EQ(trailers.count("x-served-by"), 1u);
    EXPECT_EQ(std::string(trailers.find("x-served-by")->second.data(), trailers.find("x-served-by")->second.size()),
              "python");
    ControlCall call = control.Calls().back();
    EXPECT_EQ(call.method, "/inference.GRPCInferenceService/ModelMetadata");
    EXPECT_EQ(call.request, req.SerializeAsString());
    EXPECT_EQ(MetadataValue(call, "authorization"), "Bearer s3cret");
    EXPECT_GT(call.deadline_left_s, 0);
    EXPECT_LE(call.deadline_left_s, 11);  // grpc-timeout is rounded up on the wire
  }
  // Error codes and messages pass through, also codes the core does not use.
  control.Set(TestControl::Mode::kInline, ControlReply{StatusCode::kNotFound, "model 'x' is not being served", "", {}});
  grpc::ClientContext ctx;
  inference::ModelReadyResponse ready;
  grpc::Status st = f.stub->ModelReady(&ctx, inference::ModelReadyRequest(), &ready);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "model 'x' is not being served");
  EXPECT_EQ(control.Calls().back().deadline_left_s, -1);  // no deadline
  control.Set(TestControl::Mode::kInline, ControlReply{static_cast<StatusCode>(7), "no", "", {}});
  grpc::ClientContext ctx2;
  inference::RepositoryModelLoadResponse load;
  st = f.stub->RepositoryModelLoad(&ctx2, inference::RepositoryModelLoadRequest(), &load);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(control.Calls().back().method, "/inference.GRPCInferenceService/RepositoryModelLoad");
}

TEST(GrpcControlTest, WithoutAControlPlaneOtherCallsAreUnimplemented) {
  Frontend f;
  f.Start();
  grpc::ClientContext ctx;
  inference::ServerMetadataResponse resp;
  grpc::Status st = f.stub->ServerMetadata(&ctx, inference::ServerMetadataRequest(), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  std::string out;
  st = f.RawCall("/some.Other/Method", "", &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  HealthCheckRequest hc;
  hc.set_service("calc");
  st = f.RawCall("/grpc.health.v1.Health/Check", hc.SerializeAsString(), &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

TEST(GrpcControlTest, AControlPlaneThatNeverAnswersHoldsNeitherClientsNorShutdown) {
  TestControl control;
  control.Set(TestControl::Mode::kHold, {});
  Frontend f;
  f.Start({}, &control);
  {  // the client's deadline ends the call
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    inference::ModelConfigResponse resp;
    grpc::Status st = f.stub->ModelConfig(&ctx, inference::ModelConfigRequest(), &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // A call with no deadline is cancelled at the end of Shutdown's grace.
  std::thread client([&] {
    grpc::ClientContext ctx;
    inference::ModelConfigResponse resp;
    grpc::Status st = f.stub->ModelConfig(&ctx, inference::ModelConfigRequest(), &resp);
    EXPECT_FALSE(st.ok());
  });
  ASSERT_TRUE(control.WaitForCalls(2));
  const auto t0 = std::chrono::steady_clock::now();
  f.fe->Shutdown(0.2);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(kSanitized ? 10 : 3));
  client.join();
  for (auto& done : control.TakeHeld()) done(ControlReply{});  // late answers: ignored
}

TEST(GrpcControlTest, HealthCheckAndReadinessFollowSetServing) {
  TestControl control;
  HealthCheckResponse model_status;
  model_status.set_status(HealthCheckResponse::NOT_SERVING);
  ControlReply reply;
  reply.response = model_status.SerializeAsString();
  control.Set(TestControl::Mode::kInline, reply);
  Frontend f;
  f.Start({}, &control);
  auto health = grpc::health::v1::Health::NewStub(f.channel);
  auto check = [&](const std::string& service) {
    grpc::ClientContext ctx;
    HealthCheckRequest req;
    req.set_service(service);
    HealthCheckResponse resp;
    grpc::Status st = health->Check(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.status();
  };
  auto ready = [&] {
    grpc::ClientContext ctx;
    inference::ServerReadyResponse resp;
    EXPECT_TRUE(f.stub->ServerReady(&ctx, inference::ServerReadyRequest(), &resp).ok());
    return resp.ready();
  };
  EXPECT_EQ(check(""), HealthCheckResponse::SERVING);
  EXPECT_EQ(check("inference.GRPCInferenceService"), HealthCheckResponse::SERVING);
  EXPECT_TRUE(ready());
  f.fe->SetServing(false);
  EXPECT_EQ(check(""), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(ready());
  grpc::ClientContext ctx;
  inference::ServerLiveResponse live;
  ASSERT_TRUE(f.stub->ServerLive(&ctx, inference::ServerLiveRequest(), &live).ok());
  EXPECT_TRUE(live.live());
  f.fe->SetServing(true);
  EXPECT_TRUE(ready());
  // A model name: the control plane answers.
  EXPECT_EQ(check("calc"), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(control.Calls().back().method, "/grpc.health.v1.Health/Check");
  HealthCheckRequest sent;
  ASSERT_TRUE(sent.ParseFromString(control.Calls().back().request));
  EXPECT_EQ(sent.service(), "calc");
  EXPECT_TRUE(control.Calls().size() == 1u);  // "" and the service were answered natively
}

TEST(GrpcControlTest, HealthWatchFollowsSetServingAndEndsAtShutdown) {
  Frontend f;
  f.Start();
  auto health = grpc::health::v1::Health::NewStub(f.channel);
  grpc::ClientContext ctx;
  HealthCheckRequest req;
  auto reader = health->Watch(&ctx, req);
  HealthCheckResponse resp;
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING);
  f.fe->SetServing(false);
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::NOT_SERVING);
  f.fe->SetServing(true);
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING);
  grpc::ClientContext other_ctx;  // another name: SERVICE_UNKNOWN
  req.set_service("calc");
  auto other = health->Watch(&other_ctx, req);
  ASSERT_TRUE(other->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::SERVICE_UNKNOWN);
  std::thread stopper([&] { f.fe->Shutdown(5); });
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(reader->Read(&resp));
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_FALSE(other->Read(&resp));
  EXPECT_TRUE(other->Finish().ok());
  stopper.join();
}

// Watches their clients cancel are dropped (their calls freed: ASan's leak check in the sanitizer
// build) while changes go on reaching the watch still open.
TEST(GrpcControlTest, HealthWatchesTheirClientsCancelAreDropped) {
  Frontend f;
  f.Start();
  auto health = grpc::health::v1::Health::NewStub(f.channel);
  HealthCheckResponse resp;
  std::vector<std::unique_ptr<grpc::ClientContext>> gone;
  for (int i = 0; i < 8; ++i) {
    gone.push_back(std::make_unique<grpc::ClientContext>());
    auto reader = health->Watch(gone.back().get(), HealthCheckRequest());
    ASSERT_TRUE(reader->Read(&resp));
    gone.back()->TryCancel();
    EXPECT_FALSE(reader->Read(&resp));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  grpc::ClientContext ctx;
  auto live = health->Watch(&ctx, HealthCheckRequest());
  ASSERT_TRUE(live->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING);
  for (bool serving : {false, true, false}) {
    f.fe->SetServing(serving);
    ASSERT_TRUE(live->Read(&resp));
    EXPECT_EQ(resp.status(), serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING);
  }
  ctx.TryCancel();
  EXPECT_FALSE(live->Read(&resp));
  live->Finish();
}

// One reflection request (grpc.reflection.v1alpha, as bytes) and its response's bytes.
std::string ReflectionExchange(const std::shared_ptr<grpc::Channel>& channel, const std::string& request_bytes) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  auto call = stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag = nullptr;
  bool ok = false;
  auto step = [&](intptr_t id) { return cq.Next(&tag, &ok) && tag == reinterpret_cast<void*>(id) && ok; };
  call->StartCall(reinterpret_cast<void*>(1));
  EXPECT_TRUE(step(1));
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  call->Write(request, reinterpret_cast<void*>(2));
  EXPECT_TRUE(step(2));
  call->Read(&response, reinterpret_cast<void*>(3));
  EXPECT_TRUE(step(3));
  call->WritesDone(reinterpret_cast<void*>(4));
  EXPECT_TRUE(step(4));
  grpc::Status st;
  call->Finish(&st, reinterpret_cast<void*>(5));
  EXPECT_TRUE(step(5));
  EXPECT_TRUE(st.ok()) << st.error_message();
  std::vector<grpc::Slice> slices;
  std::string bytes;
  EXPECT_TRUE(response.Dump(&slices).ok());
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return bytes;
}

// The length-delimited fields `number` of a message's bytes.
std::vector<std::string> Fields(const std::string& bytes, int number) {
  google::protobuf::UnknownFieldSet set;
  EXPECT_TRUE(set.ParseFromString(bytes));
  std::vector<std::string> out;
  for (int i = 0; i < set.field_count(); ++i) {
    if (set.field(i).number() == number) out.push_back(set.field(i).length_delimited());
  }
  return out;
}

// The names of the services server reflection lists (request field 7 list_services; response
// field 6 {repeated field 1 {field 1 name}}).
std::vector<std::string> ReflectedServices(const std::shared_ptr<grpc::Channel>& channel) {
  std::vector<std::string> names;
  for (const std::string& list : Fields(ReflectionExchange(channel, std::string("\x3a\x00", 2)), 6)) {
    for (const std::string& service : Fields(list, 1)) names.push_back(Fields(service, 1).at(0));
  }
  return names;
}

TEST(GrpcControlTest, ReflectionListsTheThreeServices) {
  Frontend f;
  f.Start();
  std::vector<std::string> names = ReflectedServices(f.channel);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                                             "inference.GRPCInferenceService"}));
}

// file_containing_symbol (field 4): the file that declares it, with what it imports, as
// FileDescriptorProtos (response field 4 {repeated 1}); an unknown symbol: error_response
// (field 7 {1 code, 2 message}) NOT_FOUND. The request comes back as original_request (field 2).
TEST(GrpcControlTest, ReflectionDescribesTheServicesFromTheirDescriptors) {
  Frontend f;
  f.Start();
  for (const std::string symbol : {"inference.GRPCInferenceService", "grpc.health.v1.Health"}) {
    const std::string request = "\x22" + std::string(1, static_cast<char>(symbol.size())) + symbol;
    const std::string response = ReflectionExchange(f.channel, request);
    EXPECT_EQ(Fields(response, 2), std::vector<std::string>{request});
    std::vector<std::string> files = Fields(response, 4);
    ASSERT_EQ(files.size(), 1u) << symbol;
    bool found = false;
    for (const std::string& bytes : Fields(files[0], 1)) {
      google::protobuf::FileDescriptorProto file;
      ASSERT_TRUE(file.ParseFromString(bytes));
      for (const auto& service : file.service()) {
        if (file.package() + "." + service.name() != symbol) continue;
        found = true;
        std::set<std::string> methods;
        for (const auto& m : service.method()) methods.insert(m.name());
        if (symbol == "grpc.health.v1.Health") {
          EXPECT_EQ(methods, (std::set<std::string>{"Check", "Watch"}));
        } else {
          EXPECT_TRUE(methods.count("ModelInfer") && methods.count("ModelStreamInfer") && methods.count("ServerLive"));
          EXPECT_EQ(methods.size(), 20u);  // KServe v2 with the repository, shared-memory, trace and log calls
        }
      }
    }
    EXPECT_TRUE(found) << symbol;
  }
  const std::string unknown = ReflectionExchange(f.channel, std::string("\x22\x07no.Such", 9));
  std::vector<std::string> error = Fields(unknown, 7);
  ASSERT_EQ(error.size(), 1u);
  google::protobuf::UnknownFieldSet e;
  ASSERT_TRUE(e.ParseFromString(error[0]));
  EXPECT_EQ(e.field(0).number(), 1);
  EXPECT_EQ(e.field(0).varint(), 5u);  // NOT_FOUND
  EXPECT_TRUE(Fields(unknown, 4).empty());
  // A request of no kind this server answers, and bytes that are no message: INVALID_ARGUMENT.
  for (const std::string request : {std::string(), std::string("\xff", 1)}) {
    std::vector<std::string> refused = Fields(ReflectionExchange(f.channel, request), 7);
    ASSERT_EQ(refused.size(), 1u);
    google::protobuf::UnknownFieldSet r;
    ASSERT_TRUE(r.ParseFromString(refused[0]));
    EXPECT_EQ(r.field(0).varint(), 3u);
  }
}

// The thread names of this process, with trailing digits dropped, and how many of each.
std::map<std::string, int> ThreadKinds() {
  std::map<std::string, int> kinds;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(entry.path() / "comm");
    std::string name;
    if (!std::getline(comm, name)) continue;
    while (!name.empty() && std::isdigit(static_cast<unsigned char>(name.back()))) name.pop_back();
    ++kinds[name];
  }
  return kinds;
}

// Every call is read by the frontend's lanes (one thread per completion queue): gRPC starts no
// polling threads of its own (its callback API's "nexting" threads, its synchronous server's).
TEST(GrpcControlTest, ItsOwnLanesReadEveryCallAndGrpcPollsWithNoThreadsOfItsOwn) {
  Frontend f;
  f.Load("calc", 1);
  GrpcFrontendOptions o;
  o.threads = 3;
  f.Start(o);
  ModelInferResponse resp;
  ASSERT_TRUE(f.Infer(CalcRequest("calc", 2), &resp).ok());  // synchronous client calls: no client threads
  grpc::ClientContext live_ctx;
  inference::ServerLiveResponse live;
  ASSERT_TRUE(f.stub->ServerLive(&live_ctx, inference::ServerLiveRequest(), &live).ok());
  auto health = grpc::health::v1::Health::NewStub(f.channel);
  grpc::ClientContext check_ctx;
  HealthCheckResponse check;
  ASSERT_TRUE(health->Check(&check_ctx, HealthCheckRequest(), &check).ok());
  std::map<std::string, int> kinds = ThreadKinds();
  EXPECT_EQ(kinds["il-grpc-"], 3);
  EXPECT_EQ(kinds.count("nexting_thread"), 0u);
  EXPECT_EQ(kinds.count("grpcpp_sync_ser"), 0u);
}

// A control plane that takes its time (Python waiting for its GIL, say) holds up neither
// inference nor health, even with one lane: the handler runs on the frontend's control thread.
TEST(GrpcControlTest, AControlHandlerThatWaitsHoldsUpNeitherInferenceNorHealth) {
  class Waiting final : public ControlHandler {
   public:
    void Handle(ControlCall, std::function<void(ControlReply)> done) override {
      std::unique_lock<std::mutex> lock(mu_);
      entered_ = true;
      cv_.notify_all();
      cv_.wait(lock, [this] { return released_; });
      done(ControlReply{StatusCode::kOk, "", inference::ServerMetadataResponse().SerializeAsString(), {}});
    }
    bool WaitEntered() {
      std::unique_lock<std::mutex> lock(mu_);
      return cv_.wait_for(lock, testing::kWaitTimeout, [this] { return entered_; });
    }
    void Release() {
      std::lock_guard<std::mutex> lock(mu_);
      released_ = true;
      cv_.notify_all();
    }

   private:
    std::mutex mu_;
    std::condition_variable cv_;
    bool entered_ = false, released_ = false;  // require mu_
  } control;
  Frontend f;
  f.Load("calc", 1);
  GrpcFrontendOptions o;
  o.threads = 1;
  f.Start(o, &control);
  grpc::Status meta_status;
  std::thread meta([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    inference::ServerMetadataResponse resp;
    meta_status = f.stub->ServerMetadata(&ctx, inference::ServerMetadataRequest(), &resp);
  });
  ASSERT_TRUE(control.WaitEntered());
  ModelInferResponse resp;
  grpc::Status st = f.Infer(CalcRequest("calc", 1), &resp, 5000);
  EXPECT_TRUE(st.ok()) << st.error_message();
  grpc::ClientContext live_ctx;
  live_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  inference::ServerLiveResponse live;
  EXPECT_TRUE(f.stub->ServerLive(&live_ctx, inference::ServerLiveRequest(), &live).ok());
  control.Release();
  meta.join();
  EXPECT_TRUE(meta_status.ok()) << meta_status.error_message();
}

}  // namespace
}  // namespace inferline::grpctest
