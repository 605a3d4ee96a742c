// Private: the frontend's admission control, a port of python/inferline/server/admission.py
// (same algorithm, numbers and messages) made thread-safe with one small mutex, plus a lobby
// that the Python frontend does not have.
//
// A bound on inference requests in flight: static (AdmissionOptions::static_limit) or adaptive
// (AIMD against target_ms: each 100 ms window whose latency EWMA exceeds the target cuts the
// limit by a fifth; a window that hit the limit without exceeding it raises it by a twentieth).
// A request whose deadline is shorter than its predicted latency, latency x (in flight + 1) /
// (in flight when that latency was measured + 1), is refused DEADLINE_EXCEEDED. Over the limit:
//  - no lobby (options.lobby = 0, or Admit): UNAVAILABLE at once, with a retry hint;
//  - else the request waits in the lobby (a LobbyWaiter: its bytes kept unparsed). Why: clients
//    resend a refusal at once, and a closed loop of refusals costs the server a gRPC call each
//    (~18 µs of CPU) that the model needs; a waiting request costs nothing until it leaves.
//    When an admitted request is Done, its slot goes to the NEWEST waiter that can still meet
//    its deadline (a standing queue served newest-first, as CoDel-style servers do, so that the
//    admitted ones meet theirs). Waiters leave refused: DEADLINE_EXCEEDED once their deadline
//    is shorter than the predicted latency (expired; such a waiter, or a request over the limit
//    that arrives hopeless, is held, never to be admitted, until just before its deadline or
//    for lobby_wait, whichever comes first: a closed-loop client resends each answer at once,
//    so answering early only makes it cycle faster, each cycle a gRPC call the model pays for),
//    UNAVAILABLE + retry hint when they have no
//    deadline and waited `lobby_wait_ms` (timed out) or are the oldest when the lobby is full of
//    requests or bytes (shed), UNAVAILABLE at Close (shutdown), CANCELLED when their client is
//    gone. Done checks from the oldest end; a sweeper thread (WaitToSweep/Sweep, frontend.cpp)
//    checks them all every kSweepS. A held waiter is answered from kHeldAnswerEarlyS before its
//    deadline on, by the first Done or sweep after that, so at least kHeldAnswerEarlyS - kSweepS
//    (10 ms) before it. Why a 40 ms sweep and a 50 ms window rather than 5 ms and 10 ms: at open
//    10x, ~7,000 held a second answered by a sweep every 5 ms took the sweeper 13-14% of the
//    server's one core; with these, 5% (more of them answered by Done, on the executor thread
//    that is answering anyway, the rest together), and goodput rose from 0.735 to 0.771 of
//    capacity, three runs each (bench/server/overload_threads.py).
//
// Released waiters are answered outside the lock: Done, Sweep and Close return them as a list
// that the caller hands to RunReleased when it is ready (after its own answer went out).
// RunReleased runs on the calling thread, and a release it triggers (an admitted waiter that
// fails at once and is Done) is queued, not recursed into.
//
// Thread-safety: every method may be called from any thread; each holds mu_ for a few loads and
// stores (no allocation, no call out but LobbyWaiter::Abandoned, an atomic load) except to format
// an immediate refusal's message, after the lock is released. The lobby costs the path under the
// limit nothing: Admit as before, and one pointer test in Done.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>

#include "inferline/grpc_frontend.h"

namespace inferline::grpcfe {

struct AdmissionToken {
  double started_s = 0;
  uint32_t ahead = 0;  // requests in flight when this one was admitted
};

struct AdmissionRefusal {
  StatusCode code = StatusCode::kUnavailable;
  std::string message;
  int64_t retry_after_ms = -1;  // >= 0: an overload refusal (trailer `retry-after-ms`)
};

// A request that may wait in the lobby. While linked it belongs to Admission; once released,
// exactly one of Admitted/Refused is called (RunReleased), unless Withdraw took it back first.
class LobbyWaiter {
 public:
  // Proceed: admitted with `token` (give it to Done when answered).
  virtual void Admitted(const AdmissionToken& token) noexcept = 0;
  virtual void Refused(AdmissionRefusal refusal) noexcept = 0;
  // Whether its client is gone (called under Admission's lock: keep it an atomic load).
  virtual bool Abandoned() const noexcept = 0;

 protected:
  ~LobbyWaiter() = default;

 private:
  friend class Admission;
  enum class Exit : uint8_t { kAdmitted, kExpired, kShed, kTimedOut, kCancelled, kClosed };
  // All of these require Admission::mu_ while linked; after release they belong to the releaser.
  LobbyWaiter* older_ = nullptr;
  LobbyWaiter* newer_ = nullptr;  // after release: the next one released
  bool linked_ = false;
  bool held_ = false;             // hopeless: on the held list, answered at release_s_
  Exit exit_ = Exit::kAdmitted;
  double deadline_s_ = 0;         // on Admission's clock; < 0: none
  double release_s_ = 0;          // held_: when it is answered DEADLINE_EXCEEDED
  double parked_s_ = 0;
  size_t bytes_ = 0;
  AdmissionToken token_;          // kAdmitted
  double left_s_ = 0, predicted_s_ = 0, waited_s_ = 0;  // for the refusal's message
  int64_t retry_ms_ = 1;
  uint32_t count_ = 0;            // kShed: waiting then; kTimedOut: the limit then
};

class Admission {
 public:
  enum class Entry : uint8_t {
    kAdmitted,  // *token set
    kRefused,   // *refusal set
    kLobby,     // over the limit with a lobby: keep the request and call Enter again with a waiter
    kParked,    // the waiter waits (it may already have been released on another thread)
  };

  // `clock`: seconds on a monotonic clock (default: steady_clock).
  explicit Admission(const AdmissionOptions& options, std::function<double()> clock = nullptr);

  // Admits one request (true, *token for Done) or refuses it (false, *refusal): the lobby unused.
  // deadline_left_s: seconds before the caller's deadline; nullopt: none.
  bool Admit(std::optional<double> deadline_left_s, AdmissionToken* token, AdmissionRefusal* refusal);
  // As Admit, with the lobby: `waiter` null -> kLobby where it would wait; else it waits
  // (kParked; `bytes`: its request's size) unless a slot is free by now or it is refused.
  Entry Enter(std::optional<double> deadline_left_s, LobbyWaiter* waiter, size_t bytes, AdmissionToken* token,
              AdmissionRefusal* refusal);
  // The request admitted with `token` has been answered (or failed). Returns the waiters this
  // released (for RunReleased; null when none).
  LobbyWaiter* Done(const AdmissionToken& token);
  // Takes `waiter` back if it is still waiting (true: no callback will come).
  bool Withdraw(LobbyWaiter* waiter);
  // Every waiter that can no longer be served (and any a free slot admits). For RunReleased.
  LobbyWaiter* Sweep();
  // A held waiter is answered from this long before its deadline on (see the file comment), so
  // that the answer is the server's rather than the client's own timer. kSweepS: the sweep's period.
  static constexpr double kHeldAnswerEarlyS = 0.05;
  static constexpr double kSweepS = 0.04;
  // Shutdown: every waiter is refused UNAVAILABLE, later requests over the limit at once, and
  // WaitToSweep returns false. For RunReleased.
  LobbyWaiter* Close();
  // The sweeper's wait: until something waits (at most `idle_s` when >= 0), then kSweepS; false
  // once closed.
  bool WaitToSweep(double idle_s = -1);
  // Whether requests are being refused: some wait hopeless in the lobby (held), or one was
  // refused (at once or from the lobby) within the last kRefusingS. Requests that wait and are
  // all admitted (a busy server keeping up) are not refusals.
  bool refusing() const;
  static constexpr double kRefusingS = 0.1;
  bool has_lobby() const noexcept { return lobby_max_ > 0; }

  // Calls each released waiter's Admitted or Refused (see the file comment).
  static void RunReleased(LobbyWaiter* released) noexcept;

  GrpcFrontendStats::Admission Snapshot() const;

 private:
  static constexpr double kWindowS = 0.1;

  Entry EnterImpl(std::optional<double> deadline_left_s, LobbyWaiter* waiter, size_t bytes, AdmissionToken* token,
                  AdmissionRefusal* refusal, bool use_lobby);
  // All require mu_.
  double PredictedLocked() const noexcept { return latency_s_ * (in_flight_ + 1) / (load_ + 1); }
  void LinkLocked(LobbyWaiter* w, bool held);
  void UnlinkLocked(LobbyWaiter* w);
  void HoldLocked(LobbyWaiter* w, double now, double predicted);
  void ReleaseLocked(LobbyWaiter* w, LobbyWaiter::Exit exit, LobbyWaiter** out);
  bool HopelessLocked(LobbyWaiter* w, double now, bool admitting, LobbyWaiter** out);
  void AdmitWaitersLocked(double now, LobbyWaiter** out);
  int64_t RetryMsLocked() const noexcept;

  const bool static_;
  const uint32_t min_limit_, max_limit_;
  const double target_s_;
  const uint32_t lobby_max_;
  const uint64_t lobby_bytes_max_;
  const double lobby_wait_s_;
  const std::function<double()> clock_;
  mutable std::mutex mu_;
  std::condition_variable sweep_cv_;
  uint32_t limit_;           // requires mu_
  uint32_t in_flight_ = 0;   // requires mu_
  double latency_s_ = 0;     // EWMA of admitted requests' latency; requires mu_
  double load_ = 0;          // EWMA of the requests ahead of each, measured with latency_s_; requires mu_
  uint64_t admitted_ = 0, refused_overload_ = 0, refused_deadline_ = 0;  // require mu_
  double window_end_s_;      // requires mu_
  bool hit_limit_ = false;   // requires mu_
  // The lobby, a list from oldest_ to newest_, and the hopeless held apart from it (oldest
  // first); parked_ and parked_bytes_ count both. All require mu_.
  LobbyWaiter* oldest_ = nullptr;
  LobbyWaiter* newest_ = nullptr;
  LobbyWaiter* held_oldest_ = nullptr;
  LobbyWaiter* held_newest_ = nullptr;
  uint32_t parked_ = 0;
  uint64_t parked_bytes_ = 0;
  bool closed_ = false;
  uint64_t lobby_admitted_ = 0, lobby_expired_ = 0, lobby_shed_ = 0, lobby_timed_out_ = 0, lobby_cancelled_ = 0;
  uint32_t held_ = 0;        // requires mu_
  double last_refusal_s_ = -1;  // requires mu_
};

}  // namespace inferline::grpcfe
