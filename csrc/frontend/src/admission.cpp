// Admission control (admission.h): the port of server/admission.py, and the lobby.
#include "admission.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace inferline::grpcfe {

namespace {

constexpr auto kSweepPeriod = std::chrono::duration<double>(Admission::kSweepS);

double SteadySeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string Format1(double v) {  // Python's f"{v:.1f}"
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

std::string Ms(double s) { return Format1(s * 1000); }

uint32_t LobbyMax(const AdmissionOptions& o) {
  if (o.lobby >= 0) return static_cast<uint32_t>(std::min<int64_t>(o.lobby, UINT32_MAX));
  const uint64_t base = o.static_limit > 0 ? o.static_limit : o.max_limit;
  return static_cast<uint32_t>(std::min<uint64_t>(base * 8, UINT32_MAX));
}

}  // namespace

Admission::Admission(const AdmissionOptions& o, std::function<double()> clock)
    : static_(o.static_limit > 0),
      min_limit_(o.min_limit),
      max_limit_(o.max_limit),
      target_s_(o.target_ms / 1000.0),
      lobby_max_(LobbyMax(o)),
      lobby_bytes_max_(o.lobby_bytes),
      lobby_wait_s_(o.lobby_wait_ms > 0 ? o.lobby_wait_ms / 1000.0 : 4 * o.target_ms / 1000.0),
      clock_(clock ? std::move(clock) : std::function<double()>(SteadySeconds)),
      limit_(o.static_limit > 0 ? o.static_limit : o.initial_limit),
      window_end_s_(clock_() + kWindowS) {}

bool Admission::Admit(std::optional<double> deadline_left_s, AdmissionToken* token, AdmissionRefusal* refusal) {
  return EnterImpl(deadline_left_s, nullptr, 0, token, refusal, /*use_lobby=*/false) == Entry::kAdmitted;
}

Admission::Entry Admission::Enter(std::optional<double> deadline_left_s, LobbyWaiter* waiter, size_t bytes,
                                  AdmissionToken* token, AdmissionRefusal* refusal) {
  return EnterImpl(deadline_left_s, waiter, bytes, token, refusal, /*use_lobby=*/true);
}

int64_t Admission::RetryMsLocked() const noexcept {
  return std::max<int64_t>(1, static_cast<int64_t>(latency_s_ * 1000));
}

Admission::Entry Admission::EnterImpl(std::optional<double> deadline_left_s, LobbyWaiter* waiter, size_t bytes,
                                      AdmissionToken* token, AdmissionRefusal* refusal, bool use_lobby) {
  std::unique_lock<std::mutex> lock(mu_);
  const bool over = in_flight_ >= limit_;
  const bool lobby = over && use_lobby && lobby_max_ > 0 && !closed_ && bytes <= lobby_bytes_max_;
  if (over && !lobby) {
    hit_limit_ = true;
    ++refused_overload_;
    last_refusal_s_ = clock_();
    const int64_t retry_ms = RetryMsLocked();
    const uint32_t in_flight = in_flight_, limit = limit_;
    lock.unlock();
    refusal->code = StatusCode::kUnavailable;
    refusal->retry_after_ms = retry_ms;
    refusal->message = "server overloaded: " + std::to_string(in_flight) + " requests in flight (limit " +
                       std::to_string(limit) + "); retry after ~" + std::to_string(retry_ms) + " ms";
    return Entry::kRefused;
  }
  double hopeless_predicted = -1;  // >= 0: the deadline is shorter than this predicted latency
  if (deadline_left_s && *deadline_left_s < latency_s_) {
    const double predicted = PredictedLocked();
    if (*deadline_left_s < predicted) hopeless_predicted = predicted;
  }
  if (hopeless_predicted >= 0 && !lobby) {
    ++refused_deadline_;
    last_refusal_s_ = clock_();
    lock.unlock();
    refusal->code = StatusCode::kDeadlineExceeded;
    refusal->retry_after_ms = -1;
    refusal->message = "the deadline (" + Format1(*deadline_left_s * 1000) +
                       " ms left) is shorter than the predicted latency (" + Format1(hopeless_predicted * 1000) +
                       " ms); refused before decoding";
    return Entry::kRefused;
  }
  if (lobby) {
    hit_limit_ = true;
    if (waiter == nullptr) return Entry::kLobby;
    const double now = clock_();
    waiter->deadline_s_ = deadline_left_s ? now + std::max(*deadline_left_s, 0.0) : -1;
    waiter->parked_s_ = now;
    waiter->bytes_ = bytes;
    LobbyWaiter* shed = nullptr;
    while (parked_ > 0 && (parked_ >= lobby_max_ || parked_bytes_ + bytes > lobby_bytes_max_)) {
      // The hopeless first, answered now what they would be answered later; then the oldest.
      if (held_oldest_ != nullptr) {
        ReleaseLocked(held_oldest_, LobbyWaiter::Exit::kExpired, &shed);
      } else {
        ReleaseLocked(oldest_, LobbyWaiter::Exit::kShed, &shed);
      }
    }
    const bool first = parked_ == 0;
    LinkLocked(waiter, /*held=*/false);
    if (hopeless_predicted >= 0) {  // counted as it leaves
      HoldLocked(waiter, now, hopeless_predicted);
      // Already due (less than kHeldAnswerEarlyS left): answered now, not up to a sweep later.
      if (now >= waiter->release_s_) ReleaseLocked(waiter, LobbyWaiter::Exit::kExpired, &shed);
    }
    lock.unlock();
    if (first) sweep_cv_.notify_one();
    RunReleased(shed);
    return Entry::kParked;
  }
  token->ahead = in_flight_;
  ++in_flight_;
  ++admitted_;
  lock.unlock();
  token->started_s = clock_();
  return Entry::kAdmitted;
}

LobbyWaiter* Admission::Done(const AdmissionToken& token) {
  const double now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  --in_flight_;
  latency_s_ += 0.05 * ((now - token.started_s) - latency_s_);
  load_ += 0.05 * (static_cast<double>(token.ahead) - load_);
  if (now >= window_end_s_) {
    window_end_s_ = now + kWindowS;
    if (!static_) {
      if (latency_s_ > target_s_) {
        limit_ = std::max(min_limit_, static_cast<uint32_t>(limit_ * 0.8));
      } else if (hit_limit_) {
        limit_ = std::min(max_limit_, limit_ + std::max<uint32_t>(1, limit_ / 20));
      }
    }
    hit_limit_ = false;
  }
  if (oldest_ == nullptr) return nullptr;  // the path under the limit: one test
  LobbyWaiter* out = nullptr;
  while (oldest_ != nullptr && HopelessLocked(oldest_, now, /*admitting=*/false, &out)) {
  }
  AdmitWaitersLocked(now, &out);
  return out;
}

// Admits the newest waiters that can still be served while slots are free. Requires mu_.
void Admission::AdmitWaitersLocked(double now, LobbyWaiter** out) {
  while (in_flight_ < limit_ && newest_ != nullptr) {
    LobbyWaiter* w = newest_;
    if (HopelessLocked(w, now, /*admitting=*/true, out)) continue;
    w->token_.started_s = now;
    w->token_.ahead = in_flight_;
    ++in_flight_;
    ++admitted_;
    ++lobby_admitted_;
    ReleaseLocked(w, LobbyWaiter::Exit::kAdmitted, out);
  }
}

// Releases `w` (expired, cancelled, or timed out) if it can no longer be served; `admitting`:
// it is about to be admitted (no deadline: then it goes in however long it waited). Requires mu_.
bool Admission::HopelessLocked(LobbyWaiter* w, double now, bool admitting, LobbyWaiter** out) {
  if (w->Abandoned()) {
    ReleaseLocked(w, LobbyWaiter::Exit::kCancelled, out);
    return true;
  }
  if (w->deadline_s_ >= 0) {
    const double predicted = PredictedLocked();
    if (w->deadline_s_ - now >= predicted) return false;
    HoldLocked(w, now, predicted);
    if (now >= w->release_s_) ReleaseLocked(w, LobbyWaiter::Exit::kExpired, out);
    return true;
  }
  if (admitting || now - w->parked_s_ < lobby_wait_s_) return false;
  ReleaseLocked(w, LobbyWaiter::Exit::kTimedOut, out);
  return true;
}

bool Admission::Withdraw(LobbyWaiter* waiter) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!waiter->linked_) return false;
  UnlinkLocked(waiter);
  ++lobby_cancelled_;
  return true;
}

// Moves `w` from the lobby to the held list: it can no longer meet its deadline (`predicted`
// is the latency that said so). Requires mu_.
void Admission::HoldLocked(LobbyWaiter* w, double now, double predicted) {
  UnlinkLocked(w);
  w->left_s_ = w->deadline_s_ - now;
  w->predicted_s_ = predicted;
  w->release_s_ = std::min(w->deadline_s_ - kHeldAnswerEarlyS, w->parked_s_ + lobby_wait_s_);
  LinkLocked(w, /*held=*/true);
}

LobbyWaiter* Admission::Sweep() {
  const double now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  LobbyWaiter* out = nullptr;
  // The held are only checked for their time: one whose client left meanwhile is answered no
  // later than its deadline anyway, and thousands may be held.
  for (LobbyWaiter* w = held_oldest_; w != nullptr;) {
    LobbyWaiter* newer = w->newer_;
    if (now >= w->release_s_) {
      ReleaseLocked(w, w->Abandoned() ? LobbyWaiter::Exit::kCancelled : LobbyWaiter::Exit::kExpired, &out);
    }
    w = newer;
  }
  for (LobbyWaiter* w = oldest_; w != nullptr;) {
    LobbyWaiter* newer = w->newer_;
    HopelessLocked(w, now, /*admitting=*/false, &out);
    w = newer;
  }
  AdmitWaitersLocked(now, &out);
  return out;
}

LobbyWaiter* Admission::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  LobbyWaiter* out = nullptr;
  while (held_oldest_ != nullptr) ReleaseLocked(held_oldest_, LobbyWaiter::Exit::kClosed, &out);
  while (oldest_ != nullptr) ReleaseLocked(oldest_, LobbyWaiter::Exit::kClosed, &out);
  sweep_cv_.notify_all();
  return out;
}

bool Admission::WaitToSweep(double idle_s) {
  std::unique_lock<std::mutex> lock(mu_);
  const auto something = [this] { return closed_ || parked_ > 0; };
  if (idle_s < 0) {
    sweep_cv_.wait(lock, something);
  } else if (!sweep_cv_.wait_for(lock, std::chrono::duration<double>(idle_s), something)) {
    return true;  // nothing waited for idle_s
  }
  if (!closed_) sweep_cv_.wait_for(lock, kSweepPeriod, [this] { return closed_; });
  return !closed_;
}

bool Admission::refusing() const {
  const double now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  return held_ > 0 || (last_refusal_s_ >= 0 && now - last_refusal_s_ < kRefusingS);
}

void Admission::LinkLocked(LobbyWaiter* w, bool held) {
  LobbyWaiter*& oldest = held ? held_oldest_ : oldest_;
  LobbyWaiter*& newest = held ? held_newest_ : newest_;
  w->older_ = newest;
  w->newer_ = nullptr;
  (newest != nullptr ? newest->newer_ : oldest) = w;
  newest = w;
  w->linked_ = true;
  w->held_ = held;
  held_ += held;
  ++parked_;
  parked_bytes_ += w->bytes_;
}

void Admission::UnlinkLocked(LobbyWaiter* w) {
  LobbyWaiter*& oldest = w->held_ ? held_oldest_ : oldest_;
  LobbyWaiter*& newest = w->held_ ? held_newest_ : newest_;
  (w->older_ != nullptr ? w->older_->newer_ : oldest) = w->newer_;
  (w->newer_ != nullptr ? w->newer_->older_ : newest) = w->older_;
  w->older_ = w->newer_ = nullptr;
  w->linked_ = false;
  held_ -= w->held_;
  w->held_ = false;
  --parked_;
  parked_bytes_ -= w->bytes_;
}

// Unlinks `w`, records why it leaves, and pushes it on `out`. Requires mu_.
void Admission::ReleaseLocked(LobbyWaiter* w, LobbyWaiter::Exit exit, LobbyWaiter** out) {
  const uint32_t waiting = parked_;
  UnlinkLocked(w);
  w->exit_ = exit;
  w->retry_ms_ = RetryMsLocked();
  const double now = clock_();
  w->waited_s_ = now - w->parked_s_;
  if (exit != LobbyWaiter::Exit::kAdmitted && exit != LobbyWaiter::Exit::kCancelled) last_refusal_s_ = now;
  switch (exit) {
    case LobbyWaiter::Exit::kAdmitted: break;
    case LobbyWaiter::Exit::kExpired: ++lobby_expired_; break;
    case LobbyWaiter::Exit::kShed: ++lobby_shed_; w->count_ = waiting; break;
    case LobbyWaiter::Exit::kClosed: ++lobby_shed_; break;
    case LobbyWaiter::Exit::kTimedOut: ++lobby_timed_out_; w->count_ = limit_; break;
    case LobbyWaiter::Exit::kCancelled: ++lobby_cancelled_; break;
  }
  w->newer_ = *out;
  *out = w;
}

// Refusal messages in the wording of the immediate ones.
void Admission::RunReleased(LobbyWaiter* released) noexcept {
  thread_local LobbyWaiter* pending = nullptr;
  thread_local bool running = false;
  while (released != nullptr) {  // onto this thread's queue
    LobbyWaiter* next = released->newer_;
    released->newer_ = pending;
    pending = released;
    released = next;
  }
  if (running) return;  // an outer RunReleased on this thread runs them
  running = true;
  while (pending != nullptr) {
    LobbyWaiter* w = pending;
    pending = w->newer_;
    w->newer_ = nullptr;
    if (w->exit_ == LobbyWaiter::Exit::kAdmitted) {
      w->Admitted(w->token_);  // may free w
      continue;
    }
    AdmissionRefusal r;
    const std::string retry = "retry after ~" + std::to_string(w->retry_ms_) + " ms";
    switch (w->exit_) {
      case LobbyWaiter::Exit::kAdmitted:  // above
        break;
      case LobbyWaiter::Exit::kExpired:
        r.code = StatusCode::kDeadlineExceeded;
        r.message = "the deadline (" + Ms(w->left_s_) + " ms left) is shorter than the predicted latency (" +
                    Ms(w->predicted_s_) + " ms); refused before decoding, after waiting " + Ms(w->waited_s_) +
                    " ms for admission";
        break;
      case LobbyWaiter::Exit::kShed:
        r.retry_after_ms = w->retry_ms_;
        r.message = "server overloaded: " + std::to_string(w->count_) +
                    " requests waiting for admission, this one the oldest; " + retry;
        break;
      case LobbyWaiter::Exit::kTimedOut:
        r.retry_after_ms = w->retry_ms_;
        r.message = "server overloaded: waited " + Ms(w->waited_s_) + " ms for admission (limit " +
                    std::to_string(w->count_) + " in flight); " + retry;
        break;
      case LobbyWaiter::Exit::kClosed:
        r.message = "server shutting down: the request was waiting for admission";
        break;
      case LobbyWaiter::Exit::kCancelled:
        r.code = StatusCode::kCancelled;
        r.message = "call cancelled";
        break;
    }
    w->Refused(std::move(r));  // may free w
  }
  running = false;
}

GrpcFrontendStats::Admission Admission::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  GrpcFrontendStats::Admission a;
  a.limit = limit_;
  a.adaptive = !static_;
  a.in_flight = in_flight_;
  a.latency_ms = latency_s_ * 1000.0;
  a.admitted = admitted_;
  a.refused_overload = refused_overload_;
  a.refused_deadline = refused_deadline_;
  a.lobby = lobby_max_;
  a.parked = parked_;
  a.held = held_;
  a.lobby_admitted = lobby_admitted_;
  a.lobby_expired = lobby_expired_;
  a.lobby_shed = lobby_shed_;
  a.lobby_timed_out = lobby_timed_out_;
  a.lobby_cancelled = lobby_cancelled_;
  return a;
}

}  // namespace inferline::grpcfe
