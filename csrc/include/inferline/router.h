// inferline/router.h — per-request routing with fallback over an Engine.
//
//   Router router(&engine);
//   ModelPolicy p;                                  // decided by a controller (Python)
//   p.epoch = 7;
//   p.route.arms = {{1, 0, 9000}, {2, 9000, kRouteBuckets}};   // 90% v1, 10% v2 (canary)
//   p.route.fallback = {{"digits-small", 0}};       // chain of versions without their own
//   p.versions = {{.version = 2, .chain = {{"digits", 1}}, .breaker = BreakerConfig{}}};
//   Status st = router.Publish("digits", std::move(p));  // validated; swapped in whole
//   st = router.Submit("digits", RouteRequest{}, request); // request.sink gets one answer
//
// What, per request (the mechanism; the policy is data, see route_policy.h):
//  1. Primary: RouteRequest::version if given (bypasses the arms), else the arm
//     owning RouteBucket(key), key = HashRoutingKey(routing_key) if the caller
//     gave one, else HashInputs(request.inputs). Same key, same version, everywhere.
//  2. Prediction cache of the primary (VersionPolicy::cache_bytes > 0, on-hit
//     mode): a hit is answered at once (outputs copied), nothing runs.
//  3. Each attempt (the primary, then the chain's links in order) is skipped to
//     the next link when: its breaker is open (kBreakerOpen; circuit_breaker.h);
//     a deadline is set, a next link exists and WouldMissDeadline on the
//     model's EstimateCompletionUs (kDeadline); Engine::Submit refuses it
//     (RESOURCE_EXHAUSTED: kOverload; NOT_FOUND/UNAVAILABLE: kUnavailable).
//     An accepted attempt answering INTERNAL/UNKNOWN (kError), DEADLINE_EXCEEDED
//     (kDeadline) or UNAVAILABLE/NOT_FOUND (kUnavailable) goes on to the next
//     link from the completion callback (the core isolates failing rows, so
//     batch-mates keep their answers). The primary's INVALID_ARGUMENT, CANCELLED
//     and other codes never fall back. Breakers record every outcome of an
//     attempt they admitted: failure = a backend error or unavailable (load —
//     a full queue, a missed deadline — never opens a breaker).
//     With RouteRequest::inputs_for, an attempt on a version with another
//     input signature is refused (primary) or skipped (link) first.
//  4. Chain exhausted: the primary's prediction cache in last-resort mode, else
//     the caller gets the PRIMARY's error (a fallback's error would mislead).
//  Chains are flat: a request tries its primary's chain only; the links' own
//  chains are not followed (bounded work, the whole path visible in one policy).
//  A link with version 0 means "that model as routed": its published arms pick
//  the version for the same key (its live version under a single-arm policy),
//  or Engine::kLatest when that model has no policy.
//
// Answers: Submit returns OK iff request.sink will be called exactly once (maybe
// before Submit returns) with InferResult::answered_model / answered_version /
// fallback_reason set (completion.h); tag echoed. A non-OK return is the
// primary's refusal after every fallback refused too (or bad input) and the
// sink is never called — Engine's contract. Answers of one engine batch for one
// sink arrive in one Deliver call. The input memory and the sink must stay valid
// until the sink is called. A model without a published policy is passed
// straight to Engine::Submit (RouteRequest::version or kLatest).
//
// Policy snapshots: Publish validates the policy (INVALID_ARGUMENT naming the
// field; fallback cycles over all published models refused, e.g. a->b->a or
// a:1->a:2->a) and swaps in a new immutable snapshot of every model's policy.
// A request follows the snapshot it was admitted under to its end. Breakers,
// caches and counters live per (model, version) and survive a republish that
// keeps the version with the same breaker config / cache size (a changed one
// starts afresh); a version that leaves the policy drops its cache.
//
// Thread-safety: every method may be called from any thread at once. Submit
// copies the snapshot pointer under a shared lock that Publish/Remove hold
// exclusively only to swap that pointer (validation and building happen
// before; the old snapshot is freed outside the lock). Not std::atomic<
// std::shared_ptr>: libstdc++ 12's is not lock-free either (an internal spin
// bit) and ThreadSanitizer reports its stores as races. Fallbacks are
// resubmitted from completion callbacks with Engine::Submit, which never blocks.
// Breaker, cache and counters are thread-safe on their own (lock-free counters).
// The destructor waits until every accepted request has been answered: destroy
// the Router before its Engine, and never from a completion callback.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "inferline/circuit_breaker.h"
#include "inferline/engine.h"
#include "inferline/prediction_cache.h"
#include "inferline/route_policy.h"

namespace inferline {

// Per version of a routed model: what protects it and where its requests go
// when it cannot answer.
struct VersionPolicy {
  int64_t version = 0;                   // >= 1
  std::vector<FallbackLink> chain;       // replaces ModelPolicy::route.fallback for this version
  std::optional<BreakerConfig> breaker;  // none: no breaker
  size_t cache_bytes = 0;                // > 0: a PredictionCache of this many bytes
  bool cache_last_resort = false;        // use the cache only when the chain is exhausted
};

// One model's policy. route.arms pick among versions, route.fallback is the
// chain of every version without a VersionPolicy entry (including explicit
// versions the arms do not name); route.epoch is echoed in RouterStats.
struct ModelPolicy {
  RoutePolicy route;
  std::vector<VersionPolicy> versions;  // at most one per version

  // INVALID_ARGUMENT naming the model and field at fault (not cycles: those need
  // every model's policy, see Router::Publish).
  Status Validate(std::string_view model) const;
};

struct RouteRequest {
  int64_t version = 0;            // > 0: this version, bypassing the arms
  std::string_view routing_key;   // used when has_routing_key (any bytes, may be empty)
  bool has_routing_key = false;
  // Optional: the loaded version whose input signature (names, dtypes, shapes,
  // in config order) request.inputs were converted for. Then every attempt on
  // another (model, version) first compares that version's inputs: a primary
  // that differs refuses the request (INVALID_ARGUMENT, no fallback), a link
  // that differs is skipped (FAILED_PRECONDITION; kNone, the next link is
  // tried). Positional inputs never reach a version that names them otherwise.
  std::shared_ptr<const Model> inputs_for;
};

struct RouterVersionStats {
  int64_t version = 0;
  uint64_t primary = 0;   // requests routed to it as their primary
  uint64_t answered = 0;  // successful answers it gave to router requests (as primary or fallback)
  uint64_t failed = 0;    // attempts on it that failed with a fallback reason
  std::optional<BreakerState> breaker;  // none: no breaker
  BreakerCounters breaker_counters;
  std::optional<CacheStats> cache;      // none: no cache
};

struct RouterStats {
  uint64_t epoch = 0;
  uint64_t requests = 0;            // accepted by Submit
  uint64_t answered_ok = 0;         // answers with an OK status
  uint64_t answered_error = 0;      // answers with an error status
  uint64_t answered_by_fallback = 0;  // OK answers from a fallback link
  uint64_t cache_hits = 0;          // answers from a prediction cache
  uint64_t cache_misses = 0;        // cache lookups that missed (hits + misses = lookups)
  // Requests that left their primary, by why (index: FallbackReason).
  std::array<uint64_t, 6> fallbacks{};
  std::vector<RouterVersionStats> versions;  // versions of the policy, ascending
};

class Router {
 public:
  explicit Router(Engine* engine);  // the engine must outlive the router
  ~Router();                        // waits for every accepted request's answer
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Validates and publishes `policy` for `model` (see above). FAILED_PRECONDITION
  // if route.epoch is below the published one (a stale controller).
  Status Publish(std::string model, ModelPolicy policy);
  // Stops routing `model` by policy (NOT_FOUND if none was published).
  Status Remove(std::string_view model);
  Status Submit(std::string_view model, const RouteRequest& route, const InferRequest& request);
  // The version owning bucket 0 of `model`'s arms (its live version under a
  // single-arm policy), or 0 if `model` has no policy. A host converts inputs
  // for this version's signature (every version a policy routes to shares it).
  int64_t DefaultVersion(std::string_view model) const;
  // The fallback chain of DefaultVersion (empty without a policy): where a host
  // converts inputs for when no version of `model` itself is loaded.
  std::vector<FallbackLink> DefaultChain(std::string_view model) const;
  // The model's routing stats, or NOT_FOUND if it has no policy.
  Expected<RouterStats> Stats(std::string_view model) const;

  struct Snapshot;
  struct Routed;
  class Dispatcher;

 private:
  std::shared_ptr<const Snapshot> Load() const;
  void Store(std::shared_ptr<const Snapshot> next);

  Engine* engine_;
  std::unique_ptr<Dispatcher> dispatcher_;  // the data path (router_submit.cpp)
  std::mutex publish_mu_;                   // serialises Publish/Remove
  mutable std::shared_mutex snapshot_mu_;   // held only to copy or swap snapshot_
  std::shared_ptr<const Snapshot> snapshot_;  // requires snapshot_mu_
};

// The loaded version whose input signature a request for (`model`, `version`)
// is converted for (RouteRequest::inputs_for): `version` itself when > 0
// (NOT_FOUND naming the loaded versions if it is not loaded); else the policy's
// default version (DefaultVersion) if loaded; else the latest loaded version of
// `model`; else (no version of `model` loaded: the request will fall back,
// reason kUnavailable) the first loaded link of DefaultChain, a link of version
// 0 meaning that model's default version or, without a policy, its latest;
// else NOT_FOUND naming `model`. Every entry point (the Python binding, the
// native gRPC frontend, C++ hosts) converts by this one rule, so a request
// reaches the same version with the same signature whichever way it came in.
// Thread-safe (reads the router's snapshot and the engine's map).
Expected<std::shared_ptr<Model>> ResolveInputsFor(const Router& router, const Engine& engine,
                                                  std::string_view model, int64_t version);

}  // namespace inferline
