// The native gRPC frontend's admission lobby (admission.h): requests over the limit wait,
// undecoded, and the newest that can still meet its deadline is admitted as slots free up.
// First the Admission alone on a stepped clock (newest first, expiry, the wait bound, shedding
// the oldest, cancellation, close, no recursion), then through the server (answers in
// newest-first order, a cancelled waiter, shutdown, the wait bound, a stream's request).
#include <future>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "admission.h"
#include "io_sched.h"
#include "test_grpc_fixture.h"

namespace inferline::grpctest {
namespace {

using grpcfe::Admission;
using grpcfe::AdmissionRefusal;
using grpcfe::AdmissionToken;
using grpcfe::LobbyWaiter;
using Entry = Admission::Entry;

// Logs "+name" when admitted, "-name" when refused; may call `on_admit` (to nest a release).
class TestWaiter final : public LobbyWaiter {
 public:
  TestWaiter(std::string name, std::vector<std::string>* log) : name_(std::move(name)), log_(log) {}
  void Admitted(const AdmissionToken& t) noexcept override {
    token = t;
    log_->push_back("+" + name_);
    if (on_admit) on_admit();
  }
  void Refused(AdmissionRefusal r) noexcept override {
    refusal = std::move(r);
    log_->push_back("-" + name_);
  }
  bool Abandoned() const noexcept override { return gone.load(); }

  AdmissionToken token;
  AdmissionRefusal refusal;
  std::atomic<bool> gone{false};
  std::function<void()> on_admit;

 private:
  std::string name_;
  std::vector<std::string>* log_;
};

struct Lobby {
  explicit Lobby(AdmissionOptions o = Static(1)) : a(o, [this] { return now; }) {}
  static AdmissionOptions Static(uint32_t limit) {
    AdmissionOptions o;
    o.static_limit = limit;
    return o;
  }
  AdmissionToken Take() {
    AdmissionToken t;
    AdmissionRefusal r;
    EXPECT_EQ(a.Enter(std::nullopt, nullptr, 0, &t, &r), Entry::kAdmitted);
    return t;
  }
  Entry Park(TestWaiter& w, std::optional<double> left_s = std::nullopt, size_t bytes = 10) {
    AdmissionToken t;
    AdmissionRefusal r;
    EXPECT_EQ(a.Enter(left_s, nullptr, bytes, &t, &r), Entry::kLobby);
    return a.Enter(left_s, &w, bytes, &t, &r);
  }
  double now = 0;
  Admission a;
  std::vector<std::string> log;
};

TEST(GrpcLobbyTest, TheNewestWaiterTakesEachFreedSlot) {
  Lobby l;
  AdmissionToken first = l.Take();
  TestWaiter w1("1", &l.log), w2("2", &l.log), w3("3", &l.log);
  for (TestWaiter* w : {&w1, &w2, &w3}) ASSERT_EQ(l.Park(*w), Entry::kParked);
  EXPECT_EQ(l.a.Snapshot().parked, 3u);
  EXPECT_EQ(l.a.Snapshot().lobby, 8u);  // 8 x the static limit
  Admission::RunReleased(l.a.Done(first));
  Admission::RunReleased(l.a.Done(w3.token));
  EXPECT_EQ(l.log, (std::vector<std::string>{"+3", "+2"}));
  EXPECT_FALSE(l.a.refusing()) << "waiting and admitted is no refusal";
  GrpcFrontendStats::Admission s = l.a.Snapshot();
  EXPECT_EQ(s.parked, 1u);
  EXPECT_EQ(s.in_flight, 1u);
  EXPECT_EQ(s.lobby_admitted, 2u);
  EXPECT_EQ(s.admitted, 3u);
  EXPECT_EQ(s.refused_overload, 0u);
}

// `latency` with nothing ahead (the EWMA reaches ~87% of it), so that one in flight predicts
// twice that (default 20 ms: ~35 ms).
void Warm(Lobby& l, double latency = 0.02) {
  for (int i = 0; i < 40; ++i) {
    AdmissionToken t = l.Take();
    l.now += latency;
    Admission::RunReleased(l.a.Done(t));
  }
}

TEST(GrpcLobbyTest, AHopelessWaiterIsHeldAndAnsweredDeadlineExceededShortlyBeforeItsDeadline) {
  Lobby l;
  Warm(l, 0.05);
  const double predicted = 2 * l.a.Snapshot().latency_ms / 1000;  // with one in flight: ~87 ms
  ASSERT_GT(predicted, Admission::kHeldAnswerEarlyS + 0.02);
  AdmissionToken held = l.Take();
  TestWaiter early("early", &l.log), w("w", &l.log);
  EXPECT_FALSE(l.a.refusing());
  // Hopeless on arrival with less than kHeldAnswerEarlyS left: answered at once.
  ASSERT_EQ(l.Park(early, Admission::kHeldAnswerEarlyS * 0.7), Entry::kParked);
  ASSERT_EQ(l.log, (std::vector<std::string>{"-early"}));
  EXPECT_EQ(early.refusal.code, StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(l.a.refusing()) << "refused just now";

  const double t1 = l.now;
  ASSERT_EQ(l.Park(w, 0.15), Entry::kParked);
  l.now = t1 + 0.15 - predicted - 0.001;  // still just in time
  Admission::RunReleased(l.a.Sweep());
  EXPECT_EQ(l.a.Snapshot().held, 0u);
  l.now += 0.002;  // no longer: held until kHeldAnswerEarlyS before its deadline
  Admission::RunReleased(l.a.Sweep());
  EXPECT_EQ(l.log.size(), 1u);
  EXPECT_EQ(l.a.Snapshot().held, 1u);
  EXPECT_TRUE(l.a.refusing()) << "one is held";
  l.now = t1 + 0.15 - Admission::kHeldAnswerEarlyS - 0.001;
  Admission::RunReleased(l.a.Done(held));  // a free slot does not admit it
  EXPECT_EQ(l.a.Snapshot().in_flight, 0u);
  Admission::RunReleased(l.a.Sweep());
  EXPECT_EQ(l.log.size(), 1u);
  l.now += 0.002;
  Admission::RunReleased(l.a.Sweep());
  ASSERT_EQ(l.log, (std::vector<std::string>{"-early", "-w"}));
  EXPECT_TRUE(l.a.refusing()) << "refused just now";
  l.now += Admission::kRefusingS + 0.001;
  EXPECT_FALSE(l.a.refusing());
  EXPECT_EQ(w.refusal.code, StatusCode::kDeadlineExceeded);
  EXPECT_EQ(w.refusal.retry_after_ms, -1);
  EXPECT_TRUE(Contains(w.refusal.message, "refused before decoding, after waiting")) << w.refusal.message;
  GrpcFrontendStats::Admission s = l.a.Snapshot();
  EXPECT_EQ(s.lobby_expired, 2u);
  EXPECT_EQ(s.refused_deadline, 0u);
  EXPECT_EQ(s.parked, 0u);
  EXPECT_EQ(s.held, 0u);

  AdmissionToken t;  // under the limit, a hopeless request is refused at once
  AdmissionRefusal r;
  EXPECT_EQ(l.a.Enter(0.001, nullptr, 10, &t, &r), Entry::kRefused);
  EXPECT_EQ(r.code, StatusCode::kDeadlineExceeded);
  EXPECT_EQ(l.a.Snapshot().refused_deadline, 1u);
}

TEST(GrpcLobbyTest, AHeldWaiterWithALongDeadlineIsAnsweredAfterTheWaitBound) {
  Lobby l;  // target 50 ms: 200 ms
  Warm(l);
  AdmissionToken held = l.Take();
  TestWaiter w("w", &l.log);
  const double t0 = l.now;
  ASSERT_EQ(l.Park(w, 0.03), Entry::kParked);  // 30 ms left, ~35 ms predicted: inside the answer window
  l.now = t0 + 0.001;
  Admission::RunReleased(l.a.Sweep());
  EXPECT_EQ(l.log, (std::vector<std::string>{"-w"})) << "answered at the first check";
  Admission::RunReleased(l.a.Done(held));

  Lobby m;
  Warm(m);
  held = m.Take();
  m.now += 1000;  // `held` will report 1,000 s of latency
  TestWaiter v("v", &m.log);
  const double t1 = m.now;
  ASSERT_EQ(m.Park(v, 10.0), Entry::kParked);
  m.now += 0.001;
  Admission::RunReleased(m.a.Done(held));  // the predicted latency jumps past v's 10 s: held, not admitted
  EXPECT_EQ(m.a.Snapshot().held, 1u);
  m.now = t1 + 0.199;
  Admission::RunReleased(m.a.Sweep());
  EXPECT_TRUE(m.log.empty());
  m.now = t1 + 0.201;
  Admission::RunReleased(m.a.Sweep());
  EXPECT_EQ(m.log, (std::vector<std::string>{"-v"})) << "held for the wait bound, not until its deadline";
  EXPECT_EQ(v.refusal.code, StatusCode::kDeadlineExceeded);
}

TEST(GrpcLobbyTest, AFullLobbyShedsTheHopelessFirstAndAHeldWaiterCanBeCancelled) {
  AdmissionOptions o = Lobby::Static(1);
  o.lobby = 2;
  Lobby l(o);
  Warm(l, 0.1);  // ~87 ms; one in flight predicts ~174 ms
  AdmissionToken held = l.Take();
  TestWaiter live("live", &l.log), hopeless("hopeless", &l.log), third("third", &l.log), gone("gone", &l.log);
  ASSERT_EQ(l.Park(live, 5.0), Entry::kParked);
  ASSERT_EQ(l.Park(hopeless, 0.06), Entry::kParked);  // held, due 10 ms from now
  ASSERT_EQ(l.Park(third, 5.0), Entry::kParked);  // full: the hopeless one goes, not the oldest
  ASSERT_EQ(l.log, (std::vector<std::string>{"-hopeless"}));
  EXPECT_EQ(hopeless.refusal.code, StatusCode::kDeadlineExceeded);
  EXPECT_EQ(l.a.Snapshot().lobby_shed, 0u);
  EXPECT_EQ(l.a.Snapshot().lobby_expired, 1u);
  Admission::RunReleased(l.a.Done(held));
  ASSERT_EQ(l.log.back(), "+third");
  ASSERT_EQ(l.Park(gone, 0.06), Entry::kParked);
  EXPECT_EQ(l.a.Snapshot().held, 1u);
  gone.gone = true;
  Admission::RunReleased(l.a.Sweep());
  EXPECT_EQ(l.a.Snapshot().held, 1u) << "a held waiter is checked only at its time";
  l.now += 0.015;
  Admission::RunReleased(l.a.Sweep());
  EXPECT_EQ(l.log.back(), "-gone");
  EXPECT_EQ(gone.refusal.code, StatusCode::kCancelled);
  EXPECT_EQ(l.a.Snapshot().held, 0u);
  Admission::RunReleased(l.a.Done(third.token));
  EXPECT_EQ(l.log.back(), "+live");
  Admission::RunReleased(l.a.Done(live.token));
}

TEST(GrpcLobbyTest, AWaiterWithoutADeadlineWaitsAtMostTheBound) {
  Lobby l;  // target 50 ms: waits 200 ms at most
  AdmissionToken held = l.Take();
  TestWaiter w1("1", &l.log), w2("2", &l.log);
  ASSERT_EQ(l.Park(w1), Entry::kParked);
  l.now = 0.05;
  ASSERT_EQ(l.Park(w2), Entry::kParked);
  l.now = 0.21;
  Admission::RunReleased(l.a.Sweep());
  ASSERT_EQ(l.log, (std::vector<std::string>{"-1"}));
  EXPECT_EQ(w1.refusal.code, StatusCode::kUnavailable);
  EXPECT_GE(w1.refusal.retry_after_ms, 1);
  EXPECT_EQ(w1.refusal.message, "server overloaded: waited 210.0 ms for admission (limit 1 in flight); retry after ~1 ms");
  l.now = 0.24;
  Admission::RunReleased(l.a.Done(held));
  EXPECT_EQ(l.log.back(), "+2");
  EXPECT_EQ(l.a.Snapshot().lobby_timed_out, 1u);
}

TEST(GrpcLobbyTest, AFullLobbyShedsItsOldest) {
  AdmissionOptions o = Lobby::Static(1);
  o.lobby = 2;
  o.lobby_bytes = 100;
  Lobby l(o);
  AdmissionToken held = l.Take();
  TestWaiter w1("1", &l.log), w2("2", &l.log), w3("3", &l.log), w4("4", &l.log);
  ASSERT_EQ(l.Park(w1), Entry::kParked);
  ASSERT_EQ(l.Park(w2), Entry::kParked);
  ASSERT_EQ(l.Park(w3), Entry::kParked);  // 3 > 2 waiting: the oldest goes
  ASSERT_EQ(l.log, (std::vector<std::string>{"-1"}));
  EXPECT_EQ(w1.refusal.code, StatusCode::kUnavailable);
  EXPECT_EQ(w1.refusal.message, "server overloaded: 2 requests waiting for admission, this one the oldest; retry after ~1 ms");
  ASSERT_EQ(l.Park(w4, std::nullopt, 95), Entry::kParked);  // 10 + 10 + 95 bytes, then 10 + 95 > 100: both go
  EXPECT_EQ(l.log, (std::vector<std::string>{"-1", "-2", "-3"}));
  AdmissionToken t;
  AdmissionRefusal r;
  EXPECT_EQ(l.a.Enter(std::nullopt, nullptr, 101, &t, &r), Entry::kRefused);  // larger than the lobby
  EXPECT_EQ(r.message, "server overloaded: 1 requests in flight (limit 1); retry after ~1 ms");
  GrpcFrontendStats::Admission s = l.a.Snapshot();
  EXPECT_EQ(s.lobby_shed, 3u);
  EXPECT_EQ(s.refused_overload, 1u);
  EXPECT_EQ(s.parked, 1u);
  Admission::RunReleased(l.a.Done(held));
  EXPECT_EQ(l.log.back(), "+4");
}

TEST(GrpcLobbyTest, CancelledWaitersLeave) {
  Lobby l;
  AdmissionToken held = l.Take();
  TestWaiter w1("1", &l.log), w2("2", &l.log), w3("3", &l.log);
  for (TestWaiter* w : {&w1, &w2, &w3}) ASSERT_EQ(l.Park(*w), Entry::kParked);
  EXPECT_TRUE(l.a.Withdraw(&w2));
  EXPECT_FALSE(l.a.Withdraw(&w2));
  w3.gone = true;  // its client went away; found when a slot frees
  Admission::RunReleased(l.a.Done(held));
  EXPECT_EQ(l.log, (std::vector<std::string>{"-3", "+1"}));
  EXPECT_EQ(w3.refusal.code, StatusCode::kCancelled);
  EXPECT_EQ(l.a.Snapshot().lobby_cancelled, 2u);
  EXPECT_FALSE(l.a.Withdraw(&w1));  // admitted: not waiting
}

TEST(GrpcLobbyTest, CloseRefusesEveryWaiterAndLaterRequestsAtOnce) {
  Lobby l;
  l.Take();
  TestWaiter w1("1", &l.log), w2("2", &l.log);
  ASSERT_EQ(l.Park(w1), Entry::kParked);
  ASSERT_EQ(l.Park(w2), Entry::kParked);
  Admission::RunReleased(l.a.Close());
  EXPECT_EQ(l.log.size(), 2u);
  EXPECT_EQ(w1.refusal.code, StatusCode::kUnavailable);
  EXPECT_EQ(w1.refusal.message, "server shutting down: the request was waiting for admission");
  EXPECT_FALSE(l.a.WaitToSweep());
  AdmissionToken t;
  AdmissionRefusal r;
  EXPECT_EQ(l.a.Enter(std::nullopt, nullptr, 10, &t, &r), Entry::kRefused);
}

TEST(GrpcLobbyTest, NoLobbyRefusesAtOnce) {
  AdmissionOptions o = Lobby::Static(1);
  o.lobby = 0;
  Lobby l(o);
  l.Take();
  AdmissionToken t;
  AdmissionRefusal r;
  EXPECT_EQ(l.a.Enter(std::nullopt, nullptr, 10, &t, &r), Entry::kRefused);
  EXPECT_EQ(r.code, StatusCode::kUnavailable);
  EXPECT_FALSE(l.a.has_lobby());
}

// A thread named `name` that waits until told to end; tid() once started.
class NamedThread {
 public:
  explicit NamedThread(const char* name)
      : thread_([this, name] {
          grpcfe::NameThisThread(name);
          tid_.store(static_cast<pid_t>(syscall(SYS_gettid)));
          while (!stop_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }) {
    while (tid_.load() == 0) std::this_thread::yield();
  }
  ~NamedThread() {
    stop_.store(true);
    thread_.join();
  }
  int policy() const { return sched_getscheduler(tid_.load()); }

 private:
  std::atomic<pid_t> tid_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST(GrpcOverloadScheduleTest, TheFrontendsThreadsRunBatchWhileRequestsWaitAndNormalOnceCalm) {
  EXPECT_TRUE(grpcfe::IsFrontendThreadName("nexting_thread"));
  EXPECT_TRUE(grpcfe::IsFrontendThreadName("default-executo"));  // as /proc cuts it
  EXPECT_TRUE(grpcfe::IsFrontendThreadName("grpc_global_tim"));
  EXPECT_TRUE(grpcfe::IsFrontendThreadName("il-lobby"));
  EXPECT_FALSE(grpcfe::IsFrontendThreadName("python"));
  EXPECT_FALSE(grpcfe::IsFrontendThreadName("il"));
  NamedThread io("il-test-io"), model("model-exec");
  ASSERT_EQ(io.policy(), SCHED_OTHER);
  grpcfe::OverloadSchedule off(/*batch_threads=*/false, /*coalesce_port=*/0);
  off.Tick(0, true);
  EXPECT_EQ(io.policy(), SCHED_OTHER);
  {
    grpcfe::OverloadSchedule s(/*batch_threads=*/true, /*coalesce_port=*/0);
    s.Tick(10.0, false);
    EXPECT_EQ(io.policy(), SCHED_OTHER);
    s.Tick(10.1, true);  // requests wait
    EXPECT_TRUE(s.batched());
    EXPECT_EQ(io.policy(), SCHED_BATCH);
    EXPECT_EQ(model.policy(), SCHED_OTHER) << "only the frontend's threads";
    NamedThread late("il-test-late");  // started while batched: caught within a second
    s.Tick(10.5, true);
    EXPECT_EQ(late.policy(), SCHED_OTHER);
    s.Tick(10.1 + grpcfe::OverloadSchedule::kReapplyS, true);
    EXPECT_EQ(late.policy(), SCHED_BATCH);
    const double last = 10.1 + grpcfe::OverloadSchedule::kReapplyS;
    s.Tick(last + 0.5, false);  // calm, but not for long enough
    EXPECT_EQ(io.policy(), SCHED_BATCH);
    s.Tick(last + grpcfe::OverloadSchedule::kCalmS, false);
    EXPECT_FALSE(s.batched());
    EXPECT_EQ(io.policy(), SCHED_OTHER);
    EXPECT_EQ(late.policy(), SCHED_OTHER);
    s.Tick(20.0, true);
    EXPECT_EQ(io.policy(), SCHED_BATCH);
    s.Restore();  // shutdown
    EXPECT_EQ(io.policy(), SCHED_OTHER);
  }
}

// A listener on a free loopback port, one client connected to it and the accepted end.
struct TcpPair {
  TcpPair() {
    listener = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (bind(listener, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(listener, 4) != 0 ||
        getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "no loopback listener";
      return;
    }
    port = ntohs(addr.sin_port);
    client = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(client, reinterpret_cast<sockaddr*>(&addr), len) != 0) ADD_FAILURE() << "no connection";
    accepted = accept(listener, nullptr, nullptr);
    for (int fd : {client, accepted}) SetNoDelay(fd, 1);  // as gRPC leaves its connections
  }
  ~TcpPair() {
    for (int fd : {accepted, client, listener}) close(fd);
  }
  static void SetNoDelay(int fd, int value) { setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &value, sizeof value); }
  static int NoDelay(int fd) {
    int value = -1;
    socklen_t len = sizeof value;
    getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &value, &len);
    return value != 0;
  }
  int listener = -1, client = -1, accepted = -1, port = 0;
};

TEST(GrpcOverloadScheduleTest, WhileRefusingThePortsConnectionsRunNagleAndOnlyThose) {
  TcpPair served, other;
  ASSERT_NE(served.accepted, -1);
  ASSERT_NE(other.accepted, -1);
  EXPECT_EQ(grpcfe::SetConnectionsNoDelay(served.port, false), 1) << "the accepted end only";
  EXPECT_EQ(TcpPair::NoDelay(served.accepted), 0);
  EXPECT_EQ(TcpPair::NoDelay(served.client), 1) << "a client of the port has another local port";
  EXPECT_EQ(TcpPair::NoDelay(other.accepted), 1) << "another port's connection";
  EXPECT_EQ(grpcfe::SetConnectionsNoDelay(served.port, true), 1);
  EXPECT_EQ(TcpPair::NoDelay(served.accepted), 1);
  EXPECT_EQ(grpcfe::SetConnectionsNoDelay(0, false), 0);

  grpcfe::OverloadSchedule s(/*batch_threads=*/false, /*coalesce_port=*/served.port);
  s.Tick(10.0, false);
  EXPECT_EQ(TcpPair::NoDelay(served.accepted), 1) << "calm: TCP_NODELAY";
  s.Tick(10.1, true);
  EXPECT_TRUE(s.batched());
  EXPECT_EQ(TcpPair::NoDelay(served.accepted), 0);
  TcpPair::SetNoDelay(served.accepted, 1);  // as a connection accepted meanwhile would be
  s.Tick(10.5, true);
  EXPECT_EQ(TcpPair::NoDelay(served.accepted), 1) << "not before the reapply";
  s.Tick(10.1 + grpcfe::OverloadSchedule::kReapplyS, true);
  EXPECT_EQ(TcpPair::NoDelay(served.accepted), 0);
  const double last = 10.1 + grpcfe::OverloadSchedule::kReapplyS;
  s.Tick(last + 0.5, false);
  EXPECT_EQ(TcpPair::NoDelay(served.accepted), 0) << "calm, but not for long enough";
  s.Tick(last + grpcfe::OverloadSchedule::kCalmS, false);
  EXPECT_FALSE(s.batched());
  EXPECT_EQ(TcpPair::NoDelay(served.accepted), 1);
  s.Tick(20.0, true);
  EXPECT_EQ(TcpPair::NoDelay(served.accepted), 0);
  s.Restore();  // shutdown
  EXPECT_EQ(TcpPair::NoDelay(served.accepted), 1);
}

TEST(GrpcLobbyTest, AReleaseDuringAReleaseIsQueuedNotNested) {
  Lobby l;
  AdmissionToken held = l.Take();
  TestWaiter w1("1", &l.log), w2("2", &l.log);
  ASSERT_EQ(l.Park(w1), Entry::kParked);
  ASSERT_EQ(l.Park(w2), Entry::kParked);
  w2.on_admit = [&] {  // fails at once: Done releases w1 from inside w2's Admitted
    Admission::RunReleased(l.a.Done(w2.token));
    l.log.push_back("end 2");
  };
  Admission::RunReleased(l.a.Done(held));
  EXPECT_EQ(l.log, (std::vector<std::string>{"+2", "end 2", "+1"}));
}

// ---- through the server --------------------------------------------------------------------

GrpcFrontendOptions StaticOne() {
  GrpcFrontendOptions o;
  o.admission.static_limit = 1;
  return o;
}

void WaitParked(Frontend& f, uint32_t n) {
  while (f.fe->Stats().admission.parked < n) Pause(2);
}

// A unary call on its own thread; no deadline when deadline_ms is 0.
std::future<grpc::Status> InferAsync(Frontend& f, ModelInferRequest req, int deadline_ms = 20000,
                                     grpc::ClientContext* ctx = nullptr,
                                     std::multimap<std::string, std::string>* trailers = nullptr) {
  return std::async(std::launch::async, [&f, req, deadline_ms, ctx, trailers] {
    grpc::ClientContext local;
    grpc::ClientContext* c = ctx != nullptr ? ctx : &local;
    if (deadline_ms > 0) c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
    ModelInferResponse resp;
    grpc::Status st = f.stub->ModelInfer(c, req, &resp);
    if (trailers != nullptr) {
      for (const auto& [k, v] : c->GetServerTrailingMetadata()) trailers->emplace(std::string(k.data(), k.size()), std::string(v.data(), v.size()));
    }
    return st;
  });
}

TEST(GrpcLobbyE2ETest, WaitingRequestsAreServedNewestFirst) {
  Gate gate(false);
  Frontend f;
  testing::OpenOnExit open(gate);
  CalcBackend& backend = f.Load("calc", 1, &gate, /*max_batch=*/1);
  f.Start(StaticOne());
  std::vector<std::future<grpc::Status>> calls;
  calls.push_back(InferAsync(f, CalcRequestX0("calc", 0)));
  while (backend.runs.load() < 1) Pause(2);
  for (int i = 1; i <= 3; ++i) {
    calls.push_back(InferAsync(f, CalcRequestX0("calc", static_cast<float>(i))));
    WaitParked(f, i);
  }
  gate.Open();
  for (auto& c : calls) EXPECT_TRUE(c.get().ok());
  EXPECT_EQ(backend.Firsts(), (std::vector<float>{0, 3, 2, 1}));
  GrpcFrontendStats::Admission s = f.fe->Stats().admission;
  EXPECT_EQ(s.lobby_admitted, 3u);
  EXPECT_EQ(s.parked, 0u);
  EXPECT_EQ(s.refused_overload, 0u);
}

TEST(GrpcLobbyE2ETest, ACancelledWaiterLeavesTheLobbyAtOnce) {
  Gate gate(false);
  Frontend f;
  testing::OpenOnExit open(gate);
  CalcBackend& backend = f.Load("calc", 1, &gate, 1);
  f.Start(StaticOne());
  auto first = InferAsync(f, CalcRequest("calc", 1));
  while (backend.runs.load() < 1) Pause(2);
  grpc::ClientContext ctx;
  auto waiter = InferAsync(f, CalcRequest("calc", 1), 20000, &ctx);
  WaitParked(f, 1);
  ctx.TryCancel();
  EXPECT_EQ(waiter.get().error_code(), grpc::StatusCode::CANCELLED);
  while (f.fe->Stats().admission.lobby_cancelled < 1) Pause(2);
  EXPECT_EQ(f.fe->Stats().admission.parked, 0u);
  gate.Open();
  EXPECT_TRUE(first.get().ok());
  EXPECT_EQ(backend.runs.load(), 1);
  EXPECT_EQ(f.fe->Stats().errors.size(), 0u);  // a cancellation is no error
}

TEST(GrpcLobbyE2ETest, ShutdownAnswersWaitersAtOnce) {
  Gate gate(false);
  Frontend f;
  testing::OpenOnExit open(gate);
  CalcBackend& backend = f.Load("calc", 1, &gate, 1);
  f.Start(StaticOne());
  auto first = InferAsync(f, CalcRequest("calc", 1));
  while (backend.runs.load() < 1) Pause(2);
  auto w1 = InferAsync(f, CalcRequest("calc", 1));
  auto w2 = InferAsync(f, CalcRequest("calc", 1), /*deadline_ms=*/0);
  WaitParked(f, 2);
  std::thread stopper([&] { f.fe->Shutdown(/*grace_s=*/20); });  // waits for the gated call
  for (auto* w : {&w1, &w2}) {
    ASSERT_EQ(w->wait_for(std::chrono::seconds(kSanitized ? 10 : 2)), std::future_status::ready);
    grpc::Status st = w->get();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(st.error_message(), "server shutting down: the request was waiting for admission");
  }
  EXPECT_EQ(backend.runs.load(), 1);
  gate.Open();
  EXPECT_TRUE(first.get().ok());
  stopper.join();
  EXPECT_EQ(f.fe->Stats().admission.lobby_shed, 2u);
}

TEST(GrpcLobbyE2ETest, AWaiterWithoutADeadlineGetsARetryHintAfterTheBound) {
  Gate gate(false);
  GrpcFrontendOptions o = StaticOne();
  o.admission.lobby_wait_ms = kSanitized ? 400 : 100;
  Frontend f;
  testing::OpenOnExit open(gate);
  CalcBackend& backend = f.Load("calc", 1, &gate, 1);
  f.Start(o);
  auto first = InferAsync(f, CalcRequest("calc", 1));
  while (backend.runs.load() < 1) Pause(2);
  std::multimap<std::string, std::string> trailers;
  const auto start = std::chrono::steady_clock::now();
  grpc::Status st = InferAsync(f, CalcRequest("calc", 1), /*deadline_ms=*/0, nullptr, &trailers).get();
  const double waited_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(Contains(st.error_message(), "ms for admission (limit 1 in flight); retry after ~")) << st.error_message();
  EXPECT_EQ(trailers.count("retry-after-ms"), 1u);
  EXPECT_GE(waited_ms, o.admission.lobby_wait_ms);
  EXPECT_LT(waited_ms, o.admission.lobby_wait_ms + (kSanitized ? 2000 : 300));
  EXPECT_EQ(f.fe->Stats().admission.lobby_timed_out, 1u);
  EXPECT_EQ((f.fe->Stats().errors[{"grpc", "UNAVAILABLE", ""}]), 1u);
  gate.Open();
  EXPECT_TRUE(first.get().ok());
}

TEST(GrpcLobbyE2ETest, AStreamsRequestWaitsAndIsAnswered) {
  Gate gate(false);
  Frontend f;
  testing::OpenOnExit open(gate);
  CalcBackend& backend = f.Load("calc", 1, &gate, 1);
  f.Start(StaticOne());
  auto first = InferAsync(f, CalcRequest("calc", 1));
  while (backend.runs.load() < 1) Pause(2);
  grpc::ClientContext ctx;
  auto stream = f.stub->ModelStreamInfer(&ctx);
  ASSERT_TRUE(stream->Write(CalcRequest("calc", 1, true, "s1")));
  WaitParked(f, 1);
  gate.Open();
  inference::ModelStreamInferResponse answer;
  ASSERT_TRUE(stream->Read(&answer));
  EXPECT_EQ(answer.error_message(), "");
  EXPECT_EQ(answer.infer_response().id(), "s1");
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(first.get().ok());
  EXPECT_EQ(f.fe->Stats().admission.lobby_admitted, 1u);
}

}  // namespace
}  // namespace inferline::grpctest
