// inferline::GrpcLoad (grpc_load.h): the channels, the run's timeline and the open loop's
// scheduler thread; the calls themselves are the drivers' (driver.h).
//
// Timeline of Run(start): wait for start; closed loop: every slot's first request; open loop: the
// scheduler thread starts; at start + warmup the process's CPU time is read (every thread:
// CLOCK_PROCESS_CPUTIME_ID, what Python's time.process_time() reads); sending ends at
// start + warmup + duration; the drivers' Finish waits for the answers owed; CPU is read again.
//
// This process's abseil Mutex deadlock detection is switched off when a GrpcLoad is made (see the
// constructor): it is process-wide, and a client process of `inferline bench` runs nothing else.
//
// Open-loop scheduler: sleeps until the next scheduled time (clock_nanosleep, absolute, with a
// 1 us timer slack for this thread, so it wakes on time rather than up to 50 us late) and sends
// every request that is due; a late wake-up sends the backlog at once, each timed from its own
// scheduled time.
#include <sys/prctl.h>
#include <time.h>

#include <absl/synchronization/mutex.h>
#include <grpc/grpc.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <random>
#include <thread>

#include "driver.h"
#include "inferline/grpc_load.h"
#include "recorder.h"

namespace inferline {
namespace loadgen {
namespace {

void SleepUntilNs(int64_t t_ns) {
  timespec ts{static_cast<time_t>(t_ns / 1000000000), static_cast<long>(t_ns % 1000000000)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

double ProcessCpuS() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

int64_t ToNs(double s) { return static_cast<int64_t>(std::llround(s * 1e9)); }

Status CheckOptions(const GrpcLoadOptions& o) {
  auto bad = [](std::string what) { return Status(StatusCode::kInvalidArgument, std::move(what)); };
  if (o.target.empty()) return bad("GrpcLoad: no target");
  if (o.payloads.empty()) return bad("GrpcLoad: no payloads");
  if (o.channels < 1) return bad("GrpcLoad: channels must be >= 1");
  if (o.rate_rps <= 0 && o.concurrency < 1) return bad("GrpcLoad: concurrency must be >= 1 (closed loop)");
  if (o.rate_rps > 0 && o.max_outstanding < 1) return bad("GrpcLoad: max_outstanding must be >= 1");
  if (!(o.duration_s > 0) || o.warmup_s < 0 || !(o.timeout_s > 0) || !(o.interval_s > 0)) {
    return bad("GrpcLoad: duration_s, timeout_s and interval_s must be > 0, warmup_s >= 0");
  }
  if (!(o.precision > 0 && o.precision < 1)) return bad("GrpcLoad: precision must be in (0, 1)");
  if (o.streams < 0) return bad("GrpcLoad: streams must be >= 0");
  return Status::Ok();
}

class GrpcLoadImpl final : public GrpcLoad {
 public:
  explicit GrpcLoadImpl(GrpcLoadOptions o) : options_(std::move(o)) {
    // Debian's abseil (under gRPC 1.51) checks every Mutex lock for deadlock cycles (a graph
    // update per lock, ~1 us per request here); a load generator needs no such check.
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own per channel
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);              // no retry filter: every call is sent once
    for (int i = 0; i < (direct_ ? 0 : options_.channels); ++i) {
      args.SetInt("grpc.inferline_load_channel", i);      // and distinct arguments, to be sure
      context_.channels.push_back(
          grpc::CreateCustomChannel(options_.target, grpc::InsecureChannelCredentials(), args));
    }
    context_.options = &options_;
    context_.payloads.reserve(options_.payloads.size());
    for (const std::string& p : options_.payloads) {
      context_.payloads.emplace_back(p.data(), p.size(), grpc::Slice::STATIC_SLICE);
      context_.buffers.emplace_back(&context_.payloads.back(), 1);
    }
  }

  Status WaitReady(double timeout_s) override {
#ifdef INFERLINE_HAVE_NGHTTP2
    if (direct_) return ConnectH2(context_, timeout_s);
#endif
    const auto deadline = std::chrono::system_clock::now() +
                          std::chrono::duration_cast<std::chrono::system_clock::duration>(
                              std::chrono::duration<double>(timeout_s));
    for (size_t i = 0; i < context_.channels.size(); ++i) {
      if (!context_.channels[i]->WaitForConnected(deadline)) {
        return Status(StatusCode::kUnavailable, "GrpcLoad: channel " + std::to_string(i) + " to " +
                                                    options_.target + " not connected within " +
                                                    std::to_string(timeout_s) + " s");
      }
    }
    return Status::Ok();
  }

  Expected<GrpcLoadResult> Run(double start_at_s) override {
    if (recorder_ != nullptr) return Status(StatusCode::kFailedPrecondition, "GrpcLoad: Run is called once");
    RunWindow& w = context_.window;
    w.start_ns = ToNs(start_at_s);
    w.measure_from_ns = w.start_ns + ToNs(options_.warmup_s);
    w.measure_to_ns = w.measure_from_ns + ToNs(options_.duration_s);
    w.interval_ns = std::max<int64_t>(1, ToNs(options_.interval_s));
    owned_recorder_ = std::make_unique<Recorder>(w, options_.precision);
    context_.recorder = owned_recorder_.get();
    recorder_.store(owned_recorder_.get(), std::memory_order_release);
    std::unique_ptr<Driver> driver;
#ifdef INFERLINE_HAVE_NGHTTP2
    if (direct_) {
      Status connected = ConnectH2(context_, options_.timeout_s);
      if (!connected.ok()) return connected;
      driver = options_.stream ? MakeH2StreamDriver(context_) : MakeH2UnaryDriver(context_);
    }
#endif
    if (!driver) driver = options_.stream ? MakeStreamDriver(context_) : MakeUnaryDriver(context_);

    SleepUntilNs(w.start_ns);
    std::thread scheduler;
    if (context_.closed_loop()) {
      driver->StartClosed();
    } else {
      scheduler = std::thread([this, &driver] { Schedule(*driver); });
    }
    SleepUntilNs(w.measure_from_ns);
    const double cpu0 = ProcessCpuS();
    if (scheduler.joinable()) scheduler.join();
    SleepUntilNs(w.measure_to_ns);
    driver->Finish();
    driver.reset();
    GrpcLoadResult result = context_.recorder->Result(options_.duration_s);
    result.cpu_s = ProcessCpuS() - cpu0;
    result.client = direct_ ? "nghttp2" : "grpc";
    return result;
  }

  GrpcLoadProgress Progress() const override {
    const Recorder* r = recorder_.load(std::memory_order_acquire);
    return r ? r->Progress() : GrpcLoadProgress{};
  }

 private:
  void Schedule(Driver& driver) {
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    const RunWindow& w = context_.window;
    std::mt19937_64 rng(options_.seed);
    std::exponential_distribution<double> gap_s(options_.rate_rps);
    const double interval_s = 1.0 / options_.rate_rps;
    const int64_t give_up_ns = w.measure_to_ns + ToNs(options_.timeout_s);
    double offset_s = options_.poisson ? gap_s(rng) : options_.phase_s;  // from the start
    for (uint64_t k = 1;; ++k) {
      const int64_t scheduled = w.start_ns + ToNs(offset_s);
      if (scheduled >= w.measure_to_ns) return;
      if (NowNs() < scheduled) SleepUntilNs(scheduled);
      while (!driver.TrySend(scheduled)) {  // max_outstanding unanswered: wait for room
        if (NowNs() >= give_up_ns) return;
        SleepUntilNs(NowNs() + 1000000);
      }
      offset_s = options_.poisson ? offset_s + gap_s(rng) : options_.phase_s + static_cast<double>(k) * interval_s;
    }
  }

  GrpcLoadOptions options_;
#ifdef INFERLINE_HAVE_NGHTTP2
  const bool direct_ = options_.direct;
#else
  const bool direct_ = false;
#endif
  LoadContext context_;
  std::unique_ptr<Recorder> owned_recorder_;
  std::atomic<Recorder*> recorder_{nullptr};
};

}  // namespace
}  // namespace loadgen

Expected<std::unique_ptr<GrpcLoad>> GrpcLoad::Create(GrpcLoadOptions options) {
  Status s = loadgen::CheckOptions(options);
  if (!s.ok()) return s;
  return std::unique_ptr<GrpcLoad>(new loadgen::GrpcLoadImpl(std::move(options)));
}

}  // namespace inferline
