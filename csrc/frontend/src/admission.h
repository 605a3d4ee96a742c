// Private: the frontend's admission control, a port of python/inferline/server/admission.py
// (same algorithm, numbers and messages) made thread-safe with one small mutex.
//
// A bound on inference requests in flight: static (AdmissionOptions::static_limit) or adaptive
// (AIMD against target_ms: each 100 ms window whose latency EWMA exceeds the target cuts the
// limit by a fifth; a window that hit the limit without exceeding it raises it by a twentieth).
// Over it: UNAVAILABLE with a retry hint. A request whose deadline is shorter than its predicted
// latency, latency x (in flight + 1) / (in flight when that latency was measured + 1), is refused
// DEADLINE_EXCEEDED. Both before the request's message is parsed.
//
// Thread-safety: every method may be called from any thread; each holds mu_ for a few loads
// and stores (no allocation, no call out) except to format a refusal's message.
#pragma once

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

class Admission {
 public:
  // `clock`: seconds on a monotonic clock (default: steady_clock).
  explicit Admission(const AdmissionOptions& options, std::function<double()> clock = nullptr);

  // Admits one request (true, *token for Done) or refuses it (false, *refusal).
  // deadline_left_s: seconds before the caller's deadline; nullopt: none.
  bool Admit(std::optional<double> deadline_left_s, AdmissionToken* token, AdmissionRefusal* refusal);
  // The request admitted with `token` has been answered (or failed).
  void Done(const AdmissionToken& token);
  GrpcFrontendStats::Admission Snapshot() const;

 private:
  static constexpr double kWindowS = 0.1;

  const bool static_;
  const uint32_t min_limit_, max_limit_;
  const double target_s_;
  const std::function<double()> clock_;
  mutable std::mutex mu_;
  uint32_t limit_;           // requires mu_
  uint32_t in_flight_ = 0;   // requires mu_
  double latency_s_ = 0;     // EWMA of admitted requests' latency; requires mu_
  double load_ = 0;          // EWMA of the requests ahead of each, measured with latency_s_; requires mu_
  uint64_t admitted_ = 0, refused_overload_ = 0, refused_deadline_ = 0;  // require mu_
  double window_end_s_;      // requires mu_
  bool hit_limit_ = false;   // requires mu_
};

}  // namespace inferline::grpcfe
