// GrpcFrontend (grpc_frontend.h): options, the server builder, the lanes that poll it, the
// idle-stream watchdog and Shutdown. The calls themselves are in the files services.h names.
//
// Threads: every service is on gRPC's asynchronous API (completion.h). Each lane is one
// completion queue polled by one thread of ours ("il-grpc-N"), which asks gRPC for calls of
// every kind on its queue and serves what arrives there: admission, parsing and routing of
// inference requests, and the health and server RPCs. Answers are encoded and sent on the core's
// executor threads; control-plane calls wait for their handler on the "il-control" thread.
// No callback or synchronous method is registered, so gRPC starts no polling threads of its own.
#include <absl/synchronization/mutex.h>
#include <grpc/grpc.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <string>
#include <thread>
#include <vector>

#include "io_sched.h"
#include "services.h"

namespace inferline {

namespace {

using grpcfe::Shared;

constexpr int kMaxLanes = 64;

class FrontendImpl final : public GrpcFrontend {
 public:
  explicit FrontendImpl(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}
  ~FrontendImpl() override { Shutdown(0); }

  Status Build() {
    const GrpcFrontendOptions& o = shared_->options;
    grpc::ServerBuilder builder;
    const int max_message = static_cast<int>(std::min<uint64_t>(o.max_message_bytes, INT_MAX));
    builder.SetMaxReceiveMessageSize(max_message);
    builder.SetMaxSendMessageSize(max_message);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                               static_cast<int>(std::min<uint32_t>(o.max_concurrent_streams, INT_MAX)));
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, o.reuse_port ? 1 : 0);  // else a busy port fails
    builder.AddListeningPort(o.address, Credentials(o), &port_);
    builder.RegisterService(&inference_);
    builder.RegisterService(&health_);
    builder.RegisterAsyncGenericService(&generic_);
    const int lanes = o.threads > 0 ? o.threads : DefaultLanes();
    for (int i = 0; i < lanes; ++i) {
      auto lane = std::make_unique<grpcfe::Lane>();
      lane->shared = shared_;
      lane->cq = builder.AddCompletionQueue();
      lane->inference = &inference_;
      lane->health = &health_;
      lane->generic = &generic_;
      lanes_.push_back(std::move(lane));
    }
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port_ == 0) {
      server_.reset();
      for (auto& lane : lanes_) {
        lane->cq->Shutdown();
        DrainLane(lane.get());
      }
      lanes_.clear();
      return Unavailable("gRPC: cannot bind " + o.address);
    }
    if (shared_->control != nullptr) shared_->control_thread.Start();
    for (size_t i = 0; i < lanes_.size(); ++i) {
      pollers_.emplace_back([this, i] { Poll(lanes_[i].get(), static_cast<int>(i)); });
    }
    if (o.stream_idle_timeout_s > 0) watchdog_ = std::thread([this] { Watchdog(); });
    if (shared_->admission.has_lobby()) sweeper_ = std::thread([this] { Sweeper(); });
    return Status::Ok();
  }

  int port() const noexcept override { return port_; }

  void SetServing(bool serving) noexcept override {
    shared_->serving.store(serving);
    grpcfe::NotifyWatchers(*shared_);
  }

  void SetTapShare(std::string_view model, double share) override { shared_->tap.SetShare(model, share); }
  Status SetArmWatch(std::string_view model, std::optional<ArmWatch> watch) override {
    return shared_->tap.SetArmWatch(model, std::move(watch));
  }
  std::vector<ArmCounts> TakeArmCounts() override { return shared_->tap.TakeArmCounts(); }

  GrpcFrontendStats Stats() const override {
    GrpcFrontendStats s;
    s.admission = shared_->admission.Snapshot();
    shared_->counters.Fill(&s);
    s.open_streams = shared_->open_streams.load();
    return s;
  }

  void Shutdown(double grace_s) override {
    std::lock_guard<std::mutex> lock(shutdown_mu_);  // a concurrent caller waits for the first
    if (shut_down_) return;
    shut_down_ = true;
    shared_->shutting_down.store(true);
    grpcfe::EndWatchers(*shared_);  // NOT_SERVING, then they end
    // Requests waiting for admission are answered UNAVAILABLE now, not cancelled at the grace's end.
    grpcfe::Admission::RunReleased(shared_->admission.Close());
    if (sweeper_.joinable()) sweeper_.join();
    if (server_ != nullptr) {
      const auto grace = std::chrono::duration<double>(std::max(grace_s, 0.0));
      // Stops accepting, cancels what is left at the deadline and returns once every call is
      // over; the lanes go on polling meanwhile (answers, cancellations, requests refused).
      server_->Shutdown(std::chrono::system_clock::now() +
                        std::chrono::duration_cast<std::chrono::system_clock::duration>(grace));
    }
    shared_->control_thread.Stop();  // control calls still waiting: UNAVAILABLE (their calls are over)
    shared_->gate.Close();           // no operation starts from here on, so the queues can shut down
    for (auto& lane : lanes_) lane->cq->Shutdown();
    for (std::thread& t : pollers_) t.join();  // each drains its queue: the calls' last events
    {
      std::lock_guard<std::mutex> wl(watchdog_mu_);
      stop_watchdog_ = true;
    }
    watchdog_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    shared_->tap.Close();  // answers the core delivers later are not tapped
  }

 private:
  static std::shared_ptr<grpc::ServerCredentials> Credentials(const GrpcFrontendOptions& o) {
    if (o.tls_cert_pem.empty()) return grpc::InsecureServerCredentials();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({o.tls_key_pem, o.tls_cert_pem});
    return grpc::SslServerCredentials(ssl);
  }

  // One lane per 8 cores, at least 1 and at most 4: a lane's thread serves a call in a few
  // microseconds, and more threads polling the same sockets hand the poller role to each other.
  static int DefaultLanes() {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    return static_cast<int>(std::clamp(cores / 8u, 1u, 4u));
  }

  // A lane's thread: asks for calls of every kind, then serves its queue's events until the
  // queue is shut down and drained.
  static void Poll(grpcfe::Lane* lane, int index) {
    grpcfe::NameThisThread(("il-grpc-" + std::to_string(index)).c_str());
    for (int i = 0; i < kInferRequested; ++i) grpcfe::RequestModelInfer(lane);
    for (int i = 0; i < kOtherRequested; ++i) {
      grpcfe::RequestModelStreamInfer(lane);
      grpcfe::RequestServerLive(lane);
      grpcfe::RequestServerReady(lane);
      grpcfe::RequestHealthCheck(lane);
      grpcfe::RequestHealthWatch(lane);
      grpcfe::RequestGeneric(lane);
    }
    DrainLane(lane);
  }
  static void DrainLane(grpcfe::Lane* lane) {
    void* tag = nullptr;
    bool ok = false;
    while (lane->cq->Next(&tag, &ok)) static_cast<grpcfe::CqEvent*>(tag)->Complete(ok);
  }
  static constexpr int kInferRequested = 128;  // ModelInfer calls each lane has asked gRPC for
  static constexpr int kOtherRequested = 4;    // and of each other kind

  // Ends idle streams (options.stream_idle_timeout_s), checking ten times per idle period.
  void Watchdog() {
    grpcfe::NameThisThread("il-watchdog");
    const double period_s = std::max(shared_->options.stream_idle_timeout_s / 10, 0.002);
    const auto period = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(period_s));
    std::unique_lock<std::mutex> lock(watchdog_mu_);
    while (!watchdog_cv_.wait_for(lock, period, [this] { return stop_watchdog_; })) {
      lock.unlock();
      grpcfe::CheckIdleStreams(*shared_);
      lock.lock();
    }
  }

  // Answers the lobby's waiters that can no longer be served (admission.h) until Shutdown.
  // While requests are refused, the frontend's threads run SCHED_BATCH and its connections
  // Nagle's algorithm (io_sched.h).
  void Sweeper() {
    grpcfe::NameThisThread("il-lobby");
    const AdmissionOptions& o = shared_->options.admission;
    grpcfe::OverloadSchedule schedule(o.overload_batch_sched, o.overload_coalesce ? port_ : 0);
    grpcfe::Admission& admission = shared_->admission;
    while (admission.WaitToSweep(schedule.batched() ? grpcfe::OverloadSchedule::kCalmS : -1)) {
      grpcfe::Admission::RunReleased(admission.Sweep());
      schedule.Tick(std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(),
                    admission.refusing());
    }
    schedule.Restore();
  }

  const std::shared_ptr<Shared> shared_;
  grpcfe::InferenceService inference_;  // these outlive server_
  grpcfe::HealthService health_;
  grpc::AsyncGenericService generic_;
  std::vector<std::unique_ptr<grpcfe::Lane>> lanes_;  // their queues outlive server_
  std::vector<std::thread> pollers_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::mutex shutdown_mu_;
  bool shut_down_ = false;  // requires shutdown_mu_
  std::mutex watchdog_mu_;
  std::condition_variable watchdog_cv_;
  bool stop_watchdog_ = false;  // requires watchdog_mu_
  std::thread watchdog_;
  std::thread sweeper_;
};

}  // namespace

Expected<std::unique_ptr<GrpcFrontend>> GrpcFrontend::Start(Router* router, Engine* engine,
                                                            const GrpcFrontendOptions& options,
                                                            ControlHandler* control, RequestTap* tap) {
  if (router == nullptr || engine == nullptr) return InvalidArgument("GrpcFrontend: router and engine are required");
  // Debian's abseil (under gRPC 1.51) checks every Mutex lock for deadlock cycles: a graph update
  // per lock, about 1 us of the ~19 us a request costs here. Off for the process (grpc_frontend.h).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (options.tls_cert_pem.empty() != options.tls_key_pem.empty()) {
    return InvalidArgument("GrpcFrontend: TLS needs both tls_cert_pem and tls_key_pem (or neither)");
  }
  if (options.address.empty()) return InvalidArgument("GrpcFrontend: address is empty");
  if (options.max_message_bytes == 0) return InvalidArgument("GrpcFrontend: max_message_bytes must be > 0");
  if (options.threads < 0 || options.threads > kMaxLanes) {
    return InvalidArgument("GrpcFrontend: threads (lanes) must be 0 (one per 8 cores) to " + std::to_string(kMaxLanes) +
                           ", got " + std::to_string(options.threads));
  }
  if (options.max_concurrent_streams == 0) return InvalidArgument("GrpcFrontend: max_concurrent_streams must be > 0");
  const AdmissionOptions& a = options.admission;
  if (a.static_limit == 0 && (a.min_limit == 0 || a.min_limit > a.max_limit || a.initial_limit < a.min_limit ||
                              a.initial_limit > a.max_limit || !(a.target_ms > 0))) {
    return InvalidArgument("GrpcFrontend: admission needs 0 < min_limit <= initial_limit <= max_limit and target_ms > 0");
  }
  if (a.lobby < -1 || !(a.lobby_wait_ms >= 0)) {
    return InvalidArgument("GrpcFrontend: admission lobby must be -1 (8 x the limit), 0 (none) or a size, "
                           "and lobby_wait_ms >= 0");
  }
  auto shared = std::make_shared<Shared>(router, engine, options, control, tap);
  auto fe = std::make_unique<FrontendImpl>(std::move(shared));
  Status st = fe->Build();
  if (!st.ok()) return st;
  return std::unique_ptr<GrpcFrontend>(std::move(fe));
}

}  // namespace inferline
