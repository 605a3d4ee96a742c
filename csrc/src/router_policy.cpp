// Router control plane: policy validation, fallback-cycle detection, building
// and swapping snapshots, stats. The data path is in router_submit.cpp.
#include <algorithm>
#include <functional>
#include <set>
#include <utility>

#include "router_impl.h"

namespace inferline {

namespace {

Status CheckLinks(const std::vector<FallbackLink>& chain, const std::string& where) {
  for (size_t i = 0; i < chain.size(); ++i) {
    const std::string at = where + "[" + std::to_string(i) + "]";
    if (chain[i].model.empty()) return InvalidArgument(at + ".model is empty");
    if (chain[i].version < 0) return InvalidArgument(at + ".version = " + std::to_string(chain[i].version) + " must be >= 0");
  }
  return Status::Ok();
}

Status CheckVersion(const VersionPolicy& v, const std::string& at) {
  if (v.version < 1) return InvalidArgument(at + ".version = " + std::to_string(v.version) + " must be >= 1");
  INFERLINE_RETURN_IF_ERROR(CheckLinks(v.chain, at + ".chain"));
  if (v.breaker) INFERLINE_RETURN_IF_ERROR(v.breaker->Validate(at + ".breaker"));
  if (v.cache_last_resort && v.cache_bytes == 0) {
    return InvalidArgument(at + ".cache_last_resort needs cache_bytes > 0");
  }
  return Status::Ok();
}

bool SameBreaker(const std::optional<BreakerConfig>& a, const std::optional<BreakerConfig>& b) {
  if (!a || !b) return !a && !b;
  return a->consecutive_failures == b->consecutive_failures && a->error_rate == b->error_rate &&
         a->min_requests == b->min_requests && a->window_us == b->window_us && a->open_us == b->open_us &&
         a->half_open_probes == b->half_open_probes;
}

RouterVersionState MakeState(VersionPolicy policy, const RouterVersionState* old, uint64_t now_us) {
  RouterVersionState vs;
  if (old != nullptr && SameBreaker(old->policy.breaker, policy.breaker)) {
    vs.breaker = old->breaker;
  } else if (policy.breaker) {
    vs.breaker = std::make_shared<CircuitBreaker>(*policy.breaker, now_us);
  }
  if (old != nullptr && old->policy.cache_bytes == policy.cache_bytes) {
    vs.cache = old->cache;
  } else if (policy.cache_bytes > 0) {
    vs.cache = std::make_shared<PredictionCache>(policy.cache_bytes);
  }
  vs.counters = old != nullptr ? old->counters : std::make_shared<RouterVersionCounters>();
  vs.policy = std::move(policy);
  return vs;
}

// ---- fallback cycles ----------------------------------------------------------
// Nodes are (model, version) of published models; version kOther stands for
// the versions a policy does not name (they use route.fallback).
constexpr int64_t kOther = -1;
using Node = std::pair<std::string, int64_t>;

std::string NodeName(const Node& n) {
  return n.first + ":" + (n.second == kOther ? std::string("*") : std::to_string(n.second));
}

std::vector<Node> Targets(const Router::Snapshot& snap, const FallbackLink& link) {
  const RouterModelEntry* e = snap.Find(link.model);
  if (e == nullptr) return {};  // unpublished: no chains of its own
  if (link.version != 0) return {Node{link.model, e->Find(link.version) ? link.version : kOther}};
  std::vector<Node> out;  // "as routed": every arm's version
  for (const RouteArm& arm : e->policy.route.arms) out.push_back(Node{link.model, arm.version});
  return out;
}

class CycleFinder {
 public:
  explicit CycleFinder(const Router::Snapshot& snap) : snap_(snap) {}

  Status Visit(const Node& n) {
    if (done_.count(n) != 0) return Status::Ok();
    auto on_path = std::find(path_.begin(), path_.end(), n);
    if (on_path != path_.end()) {
      std::string text;
      for (auto it = on_path; it != path_.end(); ++it) text += NodeName(*it) + " -> ";
      return InvalidArgument("router policy: fallback cycle " + text + NodeName(n));
    }
    path_.push_back(n);
    const RouterModelEntry* e = snap_.Find(n.first);
    const auto& chain = n.second == kOther ? e->policy.route.fallback : e->ChainOf(n.second);
    for (const FallbackLink& link : chain) {
      for (const Node& t : Targets(snap_, link)) INFERLINE_RETURN_IF_ERROR(Visit(t));
    }
    path_.pop_back();
    done_.insert(n);
    return Status::Ok();
  }

 private:
  const Router::Snapshot& snap_;
  std::vector<Node> path_;
  std::set<Node> done_;
};

}  // namespace

Status ModelPolicy::Validate(std::string_view model) const {
  const std::string ctx = "router policy for '" + std::string(model) + "'";
  if (model.empty()) return InvalidArgument("router policy: model name is empty");
  Status st = route.Validate();
  if (!st.ok()) return InvalidArgument(ctx + ": route: " + st.message());
  INFERLINE_RETURN_IF_ERROR(CheckLinks(route.fallback, ctx + ": route.fallback"));
  std::set<int64_t> seen;
  for (size_t i = 0; i < versions.size(); ++i) {
    const std::string at = ctx + ": versions[" + std::to_string(i) + "]";
    INFERLINE_RETURN_IF_ERROR(CheckVersion(versions[i], at));
    if (!seen.insert(versions[i].version).second) {
      return InvalidArgument(at + ".version = " + std::to_string(versions[i].version) + " is listed twice");
    }
  }
  return Status::Ok();
}

std::shared_ptr<const RouterModelEntry> BuildEntry(std::string name, ModelPolicy policy, const RouterModelEntry* old,
                                                   uint64_t now_us) {
  auto e = std::make_shared<RouterModelEntry>();
  e->name = std::move(name);
  e->counters = old != nullptr ? old->counters : std::make_shared<RouterModelCounters>();
  for (const VersionPolicy& v : policy.versions) {
    e->versions.emplace(v.version, MakeState(v, old ? old->Find(v.version) : nullptr, now_us));
  }
  for (const RouteArm& arm : policy.route.arms) {  // arms without an entry: counters, default chain
    if (e->versions.count(arm.version) != 0) continue;
    VersionPolicy v;
    v.version = arm.version;
    v.chain = policy.route.fallback;
    const RouterVersionState* prev = old ? old->Find(arm.version) : nullptr;
    e->versions.emplace(arm.version, MakeState(std::move(v), prev, now_us));
  }
  e->policy = std::move(policy);
  return e;
}

Status CheckFallbackCycles(const Router::Snapshot& snapshot) {
  CycleFinder finder(snapshot);
  for (const auto& [name, entry] : snapshot.models) {
    for (const auto& [version, state] : entry->versions) INFERLINE_RETURN_IF_ERROR(finder.Visit(Node{name, version}));
    INFERLINE_RETURN_IF_ERROR(finder.Visit(Node{name, kOther}));
  }
  return Status::Ok();
}

// ---- Router -------------------------------------------------------------------

Router::Router(Engine* engine)
    : engine_(engine), dispatcher_(std::make_unique<Dispatcher>(engine)), snapshot_(std::make_shared<Snapshot>()) {}

Router::~Router() { dispatcher_->WaitIdle(); }

std::shared_ptr<const Router::Snapshot> Router::Load() const {
  std::shared_lock<std::shared_mutex> lock(snapshot_mu_);
  return snapshot_;
}

void Router::Store(std::shared_ptr<const Snapshot> next) {
  {
    std::unique_lock<std::shared_mutex> lock(snapshot_mu_);
    snapshot_.swap(next);
  }
  // `next` (the old snapshot) is released here, outside the lock.
}

Status Router::Publish(std::string model, ModelPolicy policy) {
  INFERLINE_RETURN_IF_ERROR(policy.Validate(model));
  std::lock_guard<std::mutex> serial(publish_mu_);
  std::shared_ptr<const Snapshot> cur = Load();
  const RouterModelEntry* old = cur->Find(model);
  if (old != nullptr && policy.route.epoch < old->policy.route.epoch) {
    return Status(StatusCode::kFailedPrecondition,
                  "router policy for '" + model + "': epoch " + std::to_string(policy.route.epoch) +
                      " is older than the published epoch " + std::to_string(old->policy.route.epoch));
  }
  auto next = std::make_shared<Snapshot>(*cur);
  next->models[model] = BuildEntry(model, std::move(policy), old, engine_->NowUs());
  INFERLINE_RETURN_IF_ERROR(CheckFallbackCycles(*next));
  Store(std::move(next));
  return Status::Ok();
}

Status Router::Remove(std::string_view model) {
  std::lock_guard<std::mutex> serial(publish_mu_);
  std::shared_ptr<const Snapshot> cur = Load();
  if (cur->Find(model) == nullptr) return NotFound("router: no policy published for model '" + std::string(model) + "'");
  auto next = std::make_shared<Snapshot>(*cur);
  next->models.erase(next->models.find(model));
  Store(std::move(next));
  return Status::Ok();
}

int64_t Router::DefaultVersion(std::string_view model) const {
  std::shared_ptr<const Snapshot> snap = Load();
  const RouterModelEntry* e = snap->Find(model);
  return e == nullptr ? 0 : e->policy.route.arms.front().version;
}

std::vector<FallbackLink> Router::DefaultChain(std::string_view model) const {
  std::shared_ptr<const Snapshot> snap = Load();
  const RouterModelEntry* e = snap->Find(model);
  if (e == nullptr) return {};
  return e->ChainOf(e->policy.route.arms.front().version);
}

Expected<RouterStats> Router::Stats(std::string_view model) const {
  std::shared_ptr<const Snapshot> snap = Load();
  const RouterModelEntry* e = snap->Find(model);
  if (e == nullptr) return NotFound("router: no policy published for model '" + std::string(model) + "'");
  const RouterModelCounters& c = *e->counters;
  RouterStats s;
  s.epoch = e->policy.route.epoch;
  s.requests = c.requests.load(std::memory_order_relaxed);
  s.answered_ok = c.answered_ok.load(std::memory_order_relaxed);
  s.answered_error = c.answered_error.load(std::memory_order_relaxed);
  s.answered_by_fallback = c.answered_by_fallback.load(std::memory_order_relaxed);
  s.cache_hits = c.cache_hits.load(std::memory_order_relaxed);
  s.cache_misses = c.cache_misses.load(std::memory_order_relaxed);
  for (size_t i = 0; i < s.fallbacks.size(); ++i) s.fallbacks[i] = c.fallbacks[i].load(std::memory_order_relaxed);
  const uint64_t now = engine_->NowUs();
  for (const auto& [version, vs] : e->versions) {
    RouterVersionStats v;
    v.version = version;
    v.primary = vs.counters->primary.load(std::memory_order_relaxed);
    v.answered = vs.counters->answered.load(std::memory_order_relaxed);
    v.failed = vs.counters->failed.load(std::memory_order_relaxed);
    if (vs.breaker) {
      v.breaker = vs.breaker->state(now);
      v.breaker_counters = vs.breaker->counters();
    }
    if (vs.cache) v.cache = vs.cache->stats();
    s.versions.push_back(std::move(v));
  }
  return s;
}

}  // namespace inferline
