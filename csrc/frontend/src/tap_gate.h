// Private: the RequestTap and what decides which answers reach it (TapGate): each model's
// sampled share (SetTapShare) and its rollout watch (SetArmWatch: per-arm counts, copy shares,
// the copy rate cap, labelled answers). A model without either costs one relaxed load while no
// model has one, else one lookup under a shared lock; a watched arm adds a few relaxed atomic adds.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "inferline/grpc_frontend.h"

namespace inferline::grpcfe {

// A draw in [0, 1) from a per-thread generator (a few multiplies).
double UniformDraw() noexcept;

class TapGate {
 public:
  // What Decide needs of an answer.
  struct Answered {
    std::string_view model;
    int64_t requested_version = 0;
    const InferResult* result = nullptr;
    bool has_id = false;
    uint64_t latency_us = 0;  // admission to now
    uint64_t now_ns = 0;      // a steady clock (the copy cap's windows)
  };

  explicit TapGate(RequestTap* tap) : tap_(tap) {}
  void SetShare(std::string_view model, double share);
  Status SetArmWatch(std::string_view model, std::optional<ArmWatch> watch);
  std::vector<ArmCounts> TakeArmCounts();
  // Counts the answer on its arm (a watched model) and returns why it is to be copied to the tap
  // (kTap* bits; 0: not copied). Called once per routed answer, before it goes out.
  uint32_t Decide(const Answered& a);
  // Hands `record` to the tap unless Close() was called.
  void Observe(TapRecord&& record) const;
  // No tap call starts after this returns; waits for those in progress. Counting goes on.
  void Close();

 private:
  struct Arm {
    Arm(std::vector<double> bounds, double share, double max_per_s);
    bool DrawCopy(uint64_t now_ns) noexcept;
    const std::vector<double> bounds_ms;
    const double share;
    const uint64_t per_window;  // copies per 100 ms window; 0: no cap
    std::atomic<uint64_t> requests{0}, errors{0}, fallbacks{0};
    std::unique_ptr<std::atomic<uint64_t>[]> latency;  // bounds_ms.size() + 1
    std::atomic<uint64_t> window{0}, used{0};
  };
  struct Watch {
    std::map<int64_t, std::shared_ptr<Arm>> arms;
    bool tap_with_id = false;
  };
  struct Entry {
    double share = 0;              // sampled share
    std::optional<Watch> watch;
  };
  static uint64_t PerWindow(double max_per_s) noexcept;  // the cap per window; 0: none
  static ArmCounts Take(const std::string& model, int64_t version, Arm& arm);
  void Refresh();  // requires mu_ held exclusively

  mutable std::shared_mutex mu_;
  RequestTap* tap_;                                   // requires mu_; null once closed
  std::map<std::string, Entry, std::less<>> models_;  // requires mu_
  std::vector<std::pair<std::pair<std::string, int64_t>, std::shared_ptr<Arm>>> retired_;  // requires mu_
  std::atomic<bool> any_{false};
};

}  // namespace inferline::grpcfe
