// Router data path: pick the primary, try it and then the chain's links, and
// deliver exactly one answer per accepted request. See router.h for the rules.
//
// Ownership of a Routed: Submit allocates it; while an attempt is in flight the
// engine holds it (InferRequest::tag = the Routed, sink = the Dispatcher); a
// refused attempt hands it back at once. Whoever holds it last delivers the
// caller's answer, deletes it and decrements in_flight_ (the very last access).
#include <chrono>
#include <thread>
#include <utility>

#include "router_impl.h"

namespace inferline {

namespace {

std::string Where(std::string_view model, int64_t version) {
  return "model '" + std::string(model) + "' version " + (version == 0 ? std::string("latest") : std::to_string(version));
}

bool NeedsHash(const RouterModelEntry& e, const RouteRequest& route) {
  if (route.version == 0 && e.policy.route.arms.size() > 1) return true;
  const int64_t v = route.version != 0 ? route.version : e.policy.route.arms.front().version;
  for (const FallbackLink& l : e.ChainOf(v)) {
    if (l.version == 0) return true;
  }
  return false;
}

std::vector<Tensor> ToTensors(std::vector<NamedTensor>&& named) {
  std::vector<Tensor> out;
  out.reserve(named.size());
  for (NamedTensor& t : named) out.push_back(std::move(t.tensor));
  return out;
}

// Delivers `finals` grouped by sink: one Deliver call per caller sink.
void DeliverGrouped(std::vector<std::pair<CompletionSink*, InferResult>>& finals) {
  std::vector<InferResult> group;
  for (size_t first = 0; first < finals.size(); ++first) {
    CompletionSink* sink = finals[first].first;
    if (sink == nullptr) continue;
    group.clear();
    for (size_t i = first; i < finals.size(); ++i) {
      if (finals[i].first != sink) continue;
      group.push_back(std::move(finals[i].second));
      finals[i].first = nullptr;
    }
    sink->Deliver(group.data(), group.size());
  }
}

}  // namespace

Status Router::Submit(std::string_view model, const RouteRequest& route, const InferRequest& request) {
  std::shared_ptr<const Snapshot> snap = Load();
  const RouterModelEntry* entry = snap->Find(model);
  if (entry == nullptr) return engine_->Submit(model, route.version, request);  // no policy: as Engine
  return dispatcher_->Submit(std::move(snap), *entry, route, request);
}

bool Router::Dispatcher::LookupCache(const RouterVersionState* vs, const RouterModelEntry& entry, int64_t version,
                                     const InferRequest& req, InferResult* out) {
  std::vector<NamedTensor> hit;
  if (!vs->cache->Lookup(CacheKey{entry.name, version, req.inputs}, &hit)) {
    entry.counters->cache_misses.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  entry.counters->cache_hits.fetch_add(1, std::memory_order_relaxed);
  out->status = Status::Ok();
  out->outputs = ToTensors(std::move(hit));
  out->answered_model = entry.name;
  out->answered_version = version;
  out->primary_version = version;
  return true;
}

// On-hit cache of the primary: answers `request` at once on a hit.
bool Router::Dispatcher::AnswerFromCache(const RouterModelEntry& entry, int64_t version, const RouterVersionState* vs,
                                         const InferRequest& request) {
  if (vs == nullptr || !vs->cache || vs->policy.cache_last_resort) return false;
  InferResult res;
  if (!LookupCache(vs, entry, version, request, &res)) return false;
  entry.counters->requests.fetch_add(1, std::memory_order_relaxed);
  entry.counters->answered_ok.fetch_add(1, std::memory_order_relaxed);
  vs->counters->primary.fetch_add(1, std::memory_order_relaxed);
  res.tag = request.tag;
  request.sink->Deliver(&res, 1);
  return true;
}

Status Router::Dispatcher::Submit(std::shared_ptr<const Snapshot> snap, const RouterModelEntry& entry,
                                  const RouteRequest& route, const InferRequest& request) {
  if (request.sink == nullptr) return InvalidArgument("router: request for '" + entry.name + "' has no completion sink");
  if (route.version < 0) return InvalidArgument("router: version " + std::to_string(route.version) + " must be >= 0");
  if (request.inputs.empty()) return InvalidArgument("router: request for '" + entry.name + "' has no inputs");
  uint64_t hash = 0;
  if (NeedsHash(entry, route)) hash = route.has_routing_key ? HashRoutingKey(route.routing_key) : HashInputs(request.inputs);
  const int64_t version = route.version != 0 ? route.version : PickArm(entry.policy.route, RouteBucket(hash))->version;
  const RouterVersionState* vs = entry.Find(version);
  if (AnswerFromCache(entry, version, vs, request)) return Status::Ok();

  auto* r = new Routed();
  r->snap = std::move(snap);
  r->entry = &entry;
  r->req = request;
  r->req.sink = this;
  r->req.tag = reinterpret_cast<uintptr_t>(r);
  r->sink = request.sink;
  r->tag = request.tag;
  r->rows = static_cast<uint32_t>(request.inputs[0].shape.rank > 0 ? request.inputs[0].shape.dims[0] : 1);
  r->inputs_for = route.inputs_for;
  r->hash = hash;
  r->primary_version = version;
  r->primary = vs;
  r->chain = &entry.ChainOf(version);
  if (vs != nullptr) vs->counters->primary.fetch_add(1, std::memory_order_relaxed);
  in_flight_.fetch_add(1, std::memory_order_relaxed);
  entry.counters->requests.fetch_add(1, std::memory_order_relaxed);  // before the attempt: no answer precedes it
  if (Advance(r)) return Status::Ok();
  // Nothing accepted it: a last-resort cache hit is answered, else refused.
  InferResult res = FinalError(r);
  if (res.status.ok()) {
    r->sink->Deliver(&res, 1);
    Finish(r);
    return Status::Ok();
  }
  entry.counters->requests.fetch_sub(1, std::memory_order_relaxed);  // refused: not a request after all
  Finish(r);
  return std::move(res.status);
}

bool Router::Dispatcher::Advance(Routed* r) {
  while (NextTarget(r)) {
    FallbackReason reason = FallbackReason::kNone;
    Status st = Try(r, &reason);
    if (st.ok()) return true;
    if (!OnFailure(r, st, reason)) return false;
  }
  return false;
}

bool Router::Dispatcher::NextTarget(Routed* r) {
  if (!r->started) {
    r->started = true;
    r->model = r->entry->name;
    r->version = r->primary_version;
    r->state = r->primary;
    r->on_primary = true;
    return true;
  }
  if (r->next >= r->chain->size()) return false;
  const FallbackLink& link = (*r->chain)[r->next++];
  const RouterModelEntry* target = r->snap->Find(link.model);
  r->model = link.model;
  r->version = link.version;
  if (link.version == 0 && target != nullptr) r->version = PickArm(target->policy.route, RouteBucket(r->hash))->version;
  r->state = target != nullptr && r->version != 0 ? target->Find(r->version) : nullptr;
  r->on_primary = false;
  return true;
}

Status Router::Dispatcher::Try(Routed* r, FallbackReason* reason) {
  const bool has_next = r->next < r->chain->size();
  const uint64_t deadline = r->req.deadline_us;
  if (deadline != 0 && has_next) {  // the last candidate is always tried: the model expires it itself
    std::shared_ptr<Model> m = engine_->Find(r->model, r->version);
    if (m == nullptr) {
      *reason = FallbackReason::kUnavailable;
      return NotFound("router: " + Where(r->model, r->version) + " is not loaded");
    }
    if (WouldMissDeadline(m->NowUs(), deadline, m->EstimateCompletionUs(r->rows), 0)) {
      *reason = FallbackReason::kDeadline;
      return Status(StatusCode::kDeadlineExceeded, "router: " + Where(r->model, r->version) + " would miss the deadline");
    }
  }
  if (Status sig = CheckSignature(r); !sig.ok()) return sig;  // *reason stays kNone: no breaker, no fallback of the primary
  r->admitted = false;
  if (r->state != nullptr && r->state->breaker) {
    Admission a = r->state->breaker->Allow(engine_->NowUs());
    if (!a.admit) {
      *reason = FallbackReason::kBreakerOpen;
      return Unavailable("router: circuit breaker of " + Where(r->model, r->version) + " is open");
    }
    r->admitted = true;
    r->probe = a.probe;
  }
  Status st = engine_->Submit(r->model, r->version, r->req);
  if (st.ok()) return st;  // r now belongs to the attempt
  *reason = FallbackFor(st.code());
  RecordBreaker(r, *reason);
  return st;
}

Status Router::Dispatcher::CheckSignature(const Routed* r) const {
  if (r->inputs_for == nullptr) return Status::Ok();
  const ModelConfig& want = r->inputs_for->config();
  if (r->model == want.name && r->version == want.version) return Status::Ok();  // Replace keeps the signature
  std::shared_ptr<Model> m = engine_->Find(r->model, r->version);
  if (m == nullptr) return Status::Ok();  // Engine::Submit reports it (NOT_FOUND)
  const std::vector<TensorSpec>& have = m->config().inputs;
  bool same = have.size() == want.inputs.size();
  for (size_t i = 0; same && i < have.size(); ++i) {
    same = have[i].name == want.inputs[i].name && have[i].dtype == want.inputs[i].dtype &&
           have[i].shape == want.inputs[i].shape;
  }
  if (same) return Status::Ok();
  std::string msg = "router: " + m->config().Describe() + " takes other inputs (names, dtypes or shapes) than " +
                    want.Describe() + ", which the request was converted for";
  return r->on_primary ? InvalidArgument(msg) : Status(StatusCode::kFailedPrecondition, msg);
}

// The breaker tracks a version's health, not its load: backend errors and being
// unavailable count as failures; a full queue or a missed deadline does not (they
// have fallback reasons of their own, and a full queue already refuses cheaply).
void Router::Dispatcher::RecordBreaker(const Routed* r, FallbackReason outcome) {
  const bool failed = outcome == FallbackReason::kError || outcome == FallbackReason::kUnavailable;
  if (r->admitted) r->state->breaker->Record(!failed, r->probe, engine_->NowUs());
}

bool Router::Dispatcher::OnFailure(Routed* r, const Status& st, FallbackReason reason) {
  if (reason != FallbackReason::kNone && r->state != nullptr) {
    r->state->counters->failed.fetch_add(1, std::memory_order_relaxed);
  }
  if (!r->on_primary) return true;  // a failing fallback: try the next link
  r->primary_error = st;
  if (reason == FallbackReason::kNone) return false;  // the caller's fault, or cancelled: no fallback
  r->first_reason = reason;
  r->entry->counters->fallbacks[static_cast<size_t>(reason)].fetch_add(1, std::memory_order_relaxed);
  return true;
}

// The answer of a request whose path ended without success: the primary's
// last-resort cache, else the primary's error.
InferResult Router::Dispatcher::FinalError(Routed* r) {
  InferResult res;
  res.tag = r->tag;
  res.fallback_reason = r->first_reason;
  const RouterVersionState* vs = r->primary;
  const bool last_resort = r->first_reason != FallbackReason::kNone && vs != nullptr && vs->cache &&
                           vs->policy.cache_last_resort;
  if (last_resort && LookupCache(vs, *r->entry, r->primary_version, r->req, &res)) {
    r->entry->counters->answered_ok.fetch_add(1, std::memory_order_relaxed);
    return res;
  }
  res.status = r->primary_error;
  res.answered_model = r->entry->name;
  res.answered_version = r->primary_version;
  res.primary_version = r->primary_version;
  return res;
}

void Router::Dispatcher::Finish(Routed* r) {
  delete r;
  in_flight_.fetch_sub(1, std::memory_order_release);  // last access to the router
}

void Router::Dispatcher::Deliver(InferResult* results, size_t count) noexcept {
  std::vector<std::pair<CompletionSink*, InferResult>> finals;
  std::vector<Routed*> done;
  for (size_t i = 0; i < count; ++i) {
    InferResult& res = results[i];
    auto* r = reinterpret_cast<Routed*>(static_cast<uintptr_t>(res.tag));
    const FallbackReason reason = FallbackFor(res.status.code());
    RecordBreaker(r, reason);
    if (!res.status.ok()) {
      if (OnFailure(r, res.status, reason) && Advance(r)) continue;  // resubmitted: no longer ours
      InferResult final_res = FinalError(r);
      if (!final_res.status.ok()) r->entry->counters->answered_error.fetch_add(1, std::memory_order_relaxed);
      finals.emplace_back(r->sink, std::move(final_res));
      done.push_back(r);
      continue;
    }
    RouterModelCounters& c = *r->entry->counters;
    c.answered_ok.fetch_add(1, std::memory_order_relaxed);
    if (r->state != nullptr) r->state->counters->answered.fetch_add(1, std::memory_order_relaxed);
    if (r->on_primary && r->primary != nullptr && r->primary->cache) {
      std::vector<NamedTensor> outputs;
      for (const Tensor& t : res.outputs) outputs.push_back(NamedTensor{std::string(), t});
      r->primary->cache->Insert(CacheKey{r->entry->name, r->primary_version, r->req.inputs}, outputs);
    }
    if (!r->on_primary) {
      c.answered_by_fallback.fetch_add(1, std::memory_order_relaxed);
      res.fallback_reason = r->first_reason;
    }
    res.tag = r->tag;
    res.primary_version = r->primary_version;
    finals.emplace_back(r->sink, std::move(res));
    done.push_back(r);
  }
  DeliverGrouped(finals);
  for (Routed* r : done) Finish(r);
}

void Router::Dispatcher::WaitIdle() const {
  while (in_flight_.load(std::memory_order_acquire) != 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

}  // namespace inferline
