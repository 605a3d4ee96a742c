// Private: the state behind Router (router.h). router_policy.cpp builds and
// validates snapshots (Publish, Remove, Stats); router_submit.cpp is the data
// path (Submit, fallbacks from completion callbacks).
//
// Lifetimes: a Snapshot is immutable and shared by every request admitted
// under it (Routed::snap), so the ModelEntry / VersionState pointers a request
// holds stay valid until its answer. Breakers, caches and counters are shared
// between the snapshots that keep them (shared_ptr), and thread-safe.
#pragma once

#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "inferline/router.h"

namespace inferline {

struct RouterModelCounters {
  std::atomic<uint64_t> requests{0}, answered_ok{0}, answered_error{0}, answered_by_fallback{0};
  std::atomic<uint64_t> cache_hits{0}, cache_misses{0};
  std::array<std::atomic<uint64_t>, 6> fallbacks{};
};

struct RouterVersionCounters {
  std::atomic<uint64_t> primary{0}, answered{0}, failed{0};
};

struct RouterVersionState {
  VersionPolicy policy;                      // policy.chain: this version's chain
  std::shared_ptr<CircuitBreaker> breaker;   // null: none
  std::shared_ptr<PredictionCache> cache;    // null: none
  std::shared_ptr<RouterVersionCounters> counters;
};

struct RouterModelEntry {
  std::string name;
  ModelPolicy policy;
  std::map<int64_t, RouterVersionState> versions;  // every version in the arms or policy.versions
  std::shared_ptr<RouterModelCounters> counters;

  const RouterVersionState* Find(int64_t version) const {
    auto it = versions.find(version);
    return it == versions.end() ? nullptr : &it->second;
  }
  const std::vector<FallbackLink>& ChainOf(int64_t version) const {
    const RouterVersionState* vs = Find(version);
    return vs != nullptr ? vs->policy.chain : policy.route.fallback;
  }
};

struct Router::Snapshot {
  std::map<std::string, std::shared_ptr<const RouterModelEntry>, std::less<>> models;

  const RouterModelEntry* Find(std::string_view model) const {
    auto it = models.find(model);
    return it == models.end() ? nullptr : it->second.get();
  }
};

// One in-flight routed request; touched by one thread at a time (the attempt
// in flight owns it: once Engine::Submit accepts it, only the completion may).
struct Router::Routed {
  std::shared_ptr<const Snapshot> snap;
  const RouterModelEntry* entry = nullptr;  // the model submitted to
  InferRequest req;                         // sink = the dispatcher, tag = this
  CompletionSink* sink = nullptr;           // the caller's
  uint64_t tag = 0;                         // the caller's
  uint32_t rows = 0;
  std::shared_ptr<const Model> inputs_for;  // RouteRequest::inputs_for (null: unchecked)
  uint64_t hash = 0;                        // routing key hash (when arms or live links need it)
  int64_t primary_version = 0;
  const RouterVersionState* primary = nullptr;  // null: no state for it
  const std::vector<FallbackLink>* chain = nullptr;
  size_t next = 0;         // next link of *chain to try
  bool started = false;    // the primary was tried
  // The attempt in flight (set before Engine::Submit).
  std::string_view model;
  int64_t version = 0;
  const RouterVersionState* state = nullptr;
  bool on_primary = true, admitted = false, probe = false;
  FallbackReason first_reason = FallbackReason::kNone;
  Status primary_error;
};

// The completion sink of every attempt, and the data path (router_submit.cpp).
class Router::Dispatcher final : public CompletionSink {
 public:
  explicit Dispatcher(Engine* engine) : engine_(engine) {}
  Status Submit(std::shared_ptr<const Snapshot> snap, const RouterModelEntry& entry, const RouteRequest& route,
                const InferRequest& request);
  void Deliver(InferResult* results, size_t count) noexcept override;
  void WaitIdle() const;  // until every accepted request was answered

 private:
  bool Advance(Routed* r);                         // true: an attempt was accepted (r is no longer ours)
  bool NextTarget(Routed* r);                      // false: the path is exhausted
  Status Try(Routed* r, FallbackReason* reason);   // OK: accepted
  Status CheckSignature(const Routed* r) const;    // OK: r's inputs fit the attempt's version
  bool OnFailure(Routed* r, const Status& st, FallbackReason reason);  // false: stop here
  void RecordBreaker(const Routed* r, FallbackReason outcome);
  bool AnswerFromCache(const RouterModelEntry& entry, int64_t version, const RouterVersionState* vs,
                       const InferRequest& request);
  bool LookupCache(const RouterVersionState* vs, const RouterModelEntry& entry, int64_t version,
                   const InferRequest& req, InferResult* out);
  InferResult FinalError(Routed* r);
  void Finish(Routed* r);

  Engine* engine_;
  std::atomic<int64_t> in_flight_{0};
};

// Builds the entry for `policy` (validated), reusing breakers, caches and
// counters of `old` (may be null) where the version's settings are unchanged.
std::shared_ptr<const RouterModelEntry> BuildEntry(std::string name, ModelPolicy policy,
                                                   const RouterModelEntry* old, uint64_t now_us);
// INVALID_ARGUMENT naming a fallback cycle among the snapshot's models, else OK.
Status CheckFallbackCycles(const Router::Snapshot& snapshot);

}  // namespace inferline
