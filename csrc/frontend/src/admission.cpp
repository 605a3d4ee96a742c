// Admission control (admission.h): the port of server/admission.py.
#include "admission.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace inferline::grpcfe {

namespace {

double SteadySeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string Format1(double v) {  // Python's f"{v:.1f}"
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

}  // namespace

Admission::Admission(const AdmissionOptions& o, std::function<double()> clock)
    : static_(o.static_limit > 0),
      min_limit_(o.min_limit),
      max_limit_(o.max_limit),
      target_s_(o.target_ms / 1000.0),
      clock_(clock ? std::move(clock) : std::function<double()>(SteadySeconds)),
      limit_(o.static_limit > 0 ? o.static_limit : o.initial_limit),
      window_end_s_(clock_() + kWindowS) {}

bool Admission::Admit(std::optional<double> deadline_left_s, AdmissionToken* token, AdmissionRefusal* refusal) {
  std::unique_lock<std::mutex> lock(mu_);
  if (in_flight_ >= limit_) {
    hit_limit_ = true;
    ++refused_overload_;
    const int64_t retry_ms = std::max<int64_t>(1, static_cast<int64_t>(latency_s_ * 1000));
    const uint32_t in_flight = in_flight_, limit = limit_;
    lock.unlock();
    refusal->code = StatusCode::kUnavailable;
    refusal->retry_after_ms = retry_ms;
    refusal->message = "server overloaded: " + std::to_string(in_flight) + " requests in flight (limit " +
                       std::to_string(limit) + "); retry after ~" + std::to_string(retry_ms) + " ms";
    return false;
  }
  if (deadline_left_s && *deadline_left_s < latency_s_) {
    const double predicted = latency_s_ * (in_flight_ + 1) / (load_ + 1);
    if (*deadline_left_s < predicted) {
      ++refused_deadline_;
      lock.unlock();
      refusal->code = StatusCode::kDeadlineExceeded;
      refusal->retry_after_ms = -1;
      refusal->message = "the deadline (" + Format1(*deadline_left_s * 1000) +
                         " ms left) is shorter than the predicted latency (" + Format1(predicted * 1000) +
                         " ms); refused before decoding";
      return false;
    }
  }
  token->ahead = in_flight_;
  ++in_flight_;
  ++admitted_;
  lock.unlock();
  token->started_s = clock_();
  return true;
}

void Admission::Done(const AdmissionToken& token) {
  const double now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  --in_flight_;
  latency_s_ += 0.05 * ((now - token.started_s) - latency_s_);
  load_ += 0.05 * (static_cast<double>(token.ahead) - load_);
  if (now < window_end_s_) return;
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
  return a;
}

}  // namespace inferline::grpcfe
