// The sharded answer recorder of inferline_grpc_load (recorder.h), merged once at the end.
#include "recorder.h"

#include <algorithm>

namespace inferline::loadgen {

Recorder::Recorder(const RunWindow& window, double precision) : window_(window), buckets_(precision) {
  for (Shard& s : shards_) s.dense.assign(buckets_.size(), 0);
  lag_dense_.assign(buckets_.size(), 0);
}

void Recorder::Record(unsigned shard, int64_t scheduled_ns, int64_t now_ns, const Answer& answer) {
  answered_.fetch_add(1, std::memory_order_relaxed);
  if (scheduled_ns < window_.measure_from_ns || scheduled_ns >= window_.measure_to_ns) return;
  Shard& s = shards_[shard % kShards];
  const bool ok = answer.status == "OK";
  if (!ok) {
    errors_.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.errors.find(answer.status);
    if (it == s.errors.end()) it = s.errors.emplace(std::string(answer.status), 0).first;
    ++it->second;
    return;
  }
  const double us = static_cast<double>(now_ns - scheduled_ns) / 1e3;
  const int32_t index = std::min<int32_t>(buckets_.Index(us), static_cast<int32_t>(buckets_.size()) - 1);
  const int64_t slot = (scheduled_ns - window_.measure_from_ns) / window_.interval_ns;
  std::lock_guard<std::mutex> lock(s.mu);
  ++s.ok;
  s.fallback += answer.fallback;
  ++s.dense[index];
  s.latency.Add(us);
  SparseHistogram& h = s.series[slot];
  ++h.counts[index];
  h.m.Add(us);
}

void Recorder::RecordLag(int64_t scheduled_ns, int64_t now_ns) {
  if (scheduled_ns < window_.measure_from_ns) return;
  const double us = std::max(static_cast<double>(now_ns - scheduled_ns) / 1e3, 1.0);
  ++lag_dense_[std::min<size_t>(buckets_.Index(us), lag_dense_.size() - 1)];
  lag_.Add(us);
}

namespace {

LoadHistogram FromDense(const std::vector<uint64_t>& dense, const Moments& m) {
  LoadHistogram h;
  for (size_t i = 0; i < dense.size(); ++i) {
    if (dense[i] != 0) h.counts.emplace_back(static_cast<int32_t>(i), dense[i]);
  }
  h.count = m.count;
  h.total_us = m.total;
  h.min_us = m.count ? m.min : 0;
  h.max_us = m.max;
  return h;
}

void Merge(Moments& into, const Moments& m) {
  into.count += m.count;
  into.total += m.total;
  into.min = std::min(into.min, m.min);
  into.max = std::max(into.max, m.max);
}

}  // namespace

GrpcLoadResult Recorder::Result(double duration_s) const {
  GrpcLoadResult r;
  std::vector<uint64_t> dense(buckets_.size(), 0);
  Moments latency;
  std::map<int64_t, SparseHistogram> series;
  for (const Shard& s : shards_) {
    for (size_t i = 0; i < dense.size(); ++i) dense[i] += s.dense[i];
    Merge(latency, s.latency);
    for (const auto& [slot, h] : s.series) {
      SparseHistogram& into = series[slot];
      for (const auto& [index, n] : h.counts) into.counts[index] += n;
      Merge(into.m, h.m);
    }
    for (const auto& [status, n] : s.errors) r.errors[status] += n;
    r.ok += s.ok;
    r.fallback += s.fallback;
  }
  r.latency = FromDense(dense, latency);
  r.lag = FromDense(lag_dense_, lag_);
  for (const auto& [slot, h] : series) {
    LoadHistogram& out = r.series[slot];
    out.counts.assign(h.counts.begin(), h.counts.end());
    std::sort(out.counts.begin(), out.counts.end());
    out.count = h.m.count;
    out.total_us = h.m.total;
    out.min_us = h.m.count ? h.m.min : 0;
    out.max_us = h.m.max;
  }
  r.sent_total = sent_.load();
  r.answered_total = answered_.load();
  r.achieved_rps = duration_s > 0 ? static_cast<double>(r.ok) / duration_s : 0;
  return r;
}

std::string_view StatusName(int code) {
  static constexpr std::string_view kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
      "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : std::string_view("UNKNOWN");
}

}  // namespace inferline::loadgen
