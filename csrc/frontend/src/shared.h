// Private: the state every call of one frontend shares (Shared), and the frontend-wide
// counters and tap it holds. Calls and the core's answers hold Shared by shared_ptr, so an
// answer the core delivers after the frontend is gone (a call cancelled at Shutdown whose
// request was still queued) still finds its counters; the tap is closed by then (TapGate).
#pragma once

#include <grpcpp/support/status.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>

#include "admission.h"
#include "completion.h"
#include "tap_gate.h"
#include "inferline/grpc_frontend.h"

namespace inferline::grpcfe {

inline constexpr char kInferenceService[] = "inference.GRPCInferenceService";

enum class Protocol : uint8_t { kUnary, kStream };
inline const char* ProtocolName(Protocol p) noexcept { return p == Protocol::kUnary ? "grpc" : "grpc_stream"; }

// The gRPC code a core status is answered with: the same number, except RESOURCE_EXHAUSTED (a
// full queue: retry later or elsewhere) as UNAVAILABLE (grpc_frontend.GRPC_CODE_OVERRIDES).
grpc::StatusCode WireCode(StatusCode code) noexcept;
const char* WireCodeName(grpc::StatusCode code) noexcept;

// Errors by (protocol, code, model label) and decode/encode histograms by answering version.
// Errors take a mutex (error path only); Stages takes a shared lock for one map lookup and
// returns histograms that live as long as the counters (recorded without a lock).
class FrontendCounters {
 public:
  struct StagePair {
    LatencyHistogram decode_us, encode_us;
  };
  void Error(Protocol protocol, grpc::StatusCode code, std::string model_label);
  StagePair& Stages(std::string_view model, int64_t version);
  void Fill(GrpcFrontendStats* out) const;

 private:
  struct StageKey {
    std::string model;
    int64_t version;
  };
  struct StageLess {
    using is_transparent = void;
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
      return std::tie(a.model, a.version) < std::tie(b.model, b.version);
    }
  };
  struct StageLookup {
    std::string_view model;
    int64_t version;
  };
  mutable std::mutex errors_mu_;
  std::map<std::tuple<std::string, std::string, std::string>, uint64_t> errors_;  // requires errors_mu_
  mutable std::shared_mutex stages_mu_;
  std::map<StageKey, std::unique_ptr<StagePair>, StageLess> stages_;  // requires stages_mu_
};

class StreamCall;
class WatchCall;

// Runs the control plane's work on a thread of its own ("il-control"), so that a ControlHandler
// that waits (for Python's GIL, say) never holds up a completion queue's thread.
class ControlThread {
 public:
  using Finish = std::function<void(ControlReply)>;
  explicit ControlThread(ControlHandler* handler) : handler_(handler) {}
  ~ControlThread() { Stop(); }
  void Start();
  // Calls the handler with `call` on the thread, in order; once stopped, answers UNAVAILABLE.
  void Post(ControlCall call, Finish finish);
  // Ends the thread once the call in hand returns; the calls still waiting are answered
  // UNAVAILABLE (at Shutdown they are cancelled already).
  void Stop();

 private:
  void Loop();
  ControlHandler* const handler_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<ControlCall, Finish>> waiting_;  // requires mu_
  bool stopping_ = false;                               // requires mu_
  std::thread thread_;
};

struct Shared {
  Shared(Router* r, Engine* e, const GrpcFrontendOptions& o, ControlHandler* c, RequestTap* t)
      : router(r), engine(e), control(c), options(o), admission(o.admission), tap(t), control_thread(c) {}

  // ServerReady and health Check of "" / the inference service.
  bool Ready() const noexcept { return serving.load() && !shutting_down.load(); }
  // The error counters' model label: the name if a version of it is loaded, else "_unknown".
  std::string ModelLabel(std::string_view name) const;

  Router* const router;
  Engine* const engine;
  ControlHandler* const control;
  const GrpcFrontendOptions options;
  Admission admission;
  FrontendCounters counters;
  TapGate tap;
  OpGate gate;  // every gRPC operation starts through it (completion.h)
  ControlThread control_thread;
  std::atomic<bool> serving{true};
  std::atomic<bool> shutting_down{false};
  std::atomic<uint32_t> open_streams{0};

  std::mutex streams_mu_;
  std::set<StreamCall*> streams;   // open streams, for the idle watchdog; requires streams_mu_
  std::mutex watchers_mu_;
  std::set<WatchCall*> watchers;   // health Watch calls; requires watchers_mu_
};

}  // namespace inferline::grpcfe
