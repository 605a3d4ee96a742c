// Engine: a map (name, version) -> Model behind a reader/writer lock. Models
// are created, shut down and destroyed outside the lock, so a slow drain never
// blocks lookups of other models, and completion callbacks may call Find,
// Submit, Stats and List.
#include "inferline/engine.h"

#include <iterator>
#include <utility>

namespace inferline {

namespace {

std::string Quoted(std::string_view name) {
  std::string out;
  out.reserve(name.size() + 2);
  out.append(1, '\'').append(name).append(1, '\'');
  return out;
}

std::string VersionText(int64_t version) {
  return version == Engine::kLatest ? std::string("latest version") : "version " + std::to_string(version);
}

Status EngineClosed(const std::string& what) {
  return Unavailable("engine is shut down: cannot " + what);
}

bool SameSpecs(const std::vector<TensorSpec>& a, const std::vector<TensorSpec>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].dtype != b[i].dtype || a[i].shape != b[i].shape) return false;
  }
  return true;
}

// Empty if `next` may replace `loaded`, else what differs.
std::string SignatureChange(const ModelConfig& loaded, const ModelConfig& next) {
  if (!SameSpecs(loaded.inputs, next.inputs)) return "inputs";
  if (!SameSpecs(loaded.outputs, next.outputs)) return "outputs";
  return "";
}

}  // namespace

Engine::Engine(Clock* clock) noexcept : clock_(clock != nullptr ? clock : &SteadyClock::Instance()) {}

Engine::~Engine() { Shutdown(true); }

uint64_t Engine::NowUs() const noexcept { return clock_->NowUs(); }

std::shared_ptr<Model> Engine::FindLocked(std::string_view name, int64_t version) const {
  auto it = models_.find(name);
  if (it == models_.end() || it->second.empty()) return nullptr;
  const Versions& versions = it->second;
  if (version == kLatest) return std::prev(versions.end())->second;
  auto vit = versions.find(version);
  return vit == versions.end() ? nullptr : vit->second;
}

// Requires mu_. Names what is loaded under `name` (or a few loaded names).
Status Engine::NotFoundStatus(std::string_view name, int64_t version) const {
  // "model 'm' is not loaded" when asked for the latest: no version was named.
  std::string msg = "model " + Quoted(name) + (version == kLatest ? "" : " " + VersionText(version)) + " is not loaded";
  auto it = models_.find(name);
  if (it != models_.end() && !it->second.empty()) {
    std::string list;
    for (const auto& [v, model] : it->second) list += (list.empty() ? "" : ", ") + std::to_string(v);
    return NotFound(msg + " (versions loaded: " + list + ")");
  }
  constexpr size_t kMaxNames = 10;
  std::string names;
  size_t n = 0;
  for (const auto& [other, versions] : models_) {
    if (n++ == kMaxNames) {
      names += ", ...";
      break;
    }
    names += (names.empty() ? "" : ", ") + Quoted(other);
  }
  return NotFound(msg + " (models loaded: " + (names.empty() ? std::string("none") : names) + ")");
}

Status Engine::Load(ModelConfig config, std::shared_ptr<Backend> backend) {
  const std::string what = config.Describe();
  if (config.version < 1) {
    return InvalidArgument(what + ": version must be >= 1 (0 is Engine::kLatest)");
  }
  const Status exists(StatusCode::kAlreadyExists, what + " is already loaded (Unload it first)");
  {
    std::shared_lock<std::shared_mutex> lock(mu_);
    if (closed_) return EngineClosed("load " + what);
    if (FindLocked(config.name, config.version) != nullptr) return exists;
  }
  // Validate and start outside the lock; another Load of the same version may win the race.
  auto created = Model::Create(std::move(config), std::move(backend), clock_);
  if (!created.ok()) return created.status();
  std::shared_ptr<Model> model(std::move(created).value());
  Status st;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (closed_) {
      st = EngineClosed("load " + what);
    } else {
      auto& versions = models_[model->config().name];
      if (!versions.emplace(model->config().version, model).second) st = exists;
    }
  }
  if (!st.ok()) model->Shutdown(false);  // never reachable: nothing to answer
  return st;
}

Status Engine::Replace(ModelConfig config, std::shared_ptr<Backend> backend, bool drain) {
  const std::string what = config.Describe();
  if (config.version < 1) {
    return InvalidArgument(what + ": version must be >= 1 (0 is Engine::kLatest)");
  }
  // Validate and start outside the lock: the old model serves meanwhile.
  auto created = Model::Create(std::move(config), std::move(backend), clock_);
  if (!created.ok()) return created.status();
  std::shared_ptr<Model> model(std::move(created).value());
  std::shared_ptr<Model> old;
  Status st;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    auto& versions = models_[model->config().name];  // (erased below if it stays empty)
    std::shared_ptr<Model>& slot = versions[model->config().version];
    std::string change = slot != nullptr ? SignatureChange(slot->config(), model->config()) : "";
    if (closed_) {
      st = EngineClosed("replace " + what);
    } else if (!change.empty()) {
      st = Status(StatusCode::kFailedPrecondition,
                  what + ": the replacement's " + change + " differ from the loaded ones (load a new version)");
    } else {
      old = std::exchange(slot, model);  // published: lookups see the new model from here on
    }
    if (slot == nullptr) versions.erase(model->config().version);
    if (versions.empty()) models_.erase(model->config().name);
  }
  if (!st.ok()) {
    model->Shutdown(false);  // never reachable: nothing to answer
    return st;
  }
  // Outside the lock. Submits that find `old` stopping follow it to `model`.
  if (old != nullptr) old->Shutdown(drain);
  return Status::Ok();
}

Status Engine::Unload(std::string_view name, int64_t version, bool drain) {
  std::shared_ptr<Model> model;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    auto it = models_.find(name);
    if (it == models_.end() || FindLocked(name, version) == nullptr) return NotFoundStatus(name, version);
    Versions& versions = it->second;
    auto vit = version == kLatest ? std::prev(versions.end()) : versions.find(version);
    model = std::move(vit->second);
    versions.erase(vit);
    if (versions.empty()) models_.erase(it);
  }
  model->Shutdown(drain);  // outside the lock: answers queued requests, joins executors
  return Status::Ok();
}

std::shared_ptr<Model> Engine::Find(std::string_view name, int64_t version) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return FindLocked(name, version);
}

Expected<std::shared_ptr<Model>> Engine::Get(std::string_view name, int64_t version) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  if (closed_) return EngineClosed("serve model " + Quoted(name) + " " + VersionText(version));
  std::shared_ptr<Model> model = FindLocked(name, version);
  if (model == nullptr) return NotFoundStatus(name, version);
  return model;
}

Status Engine::Submit(std::string_view name, int64_t version, const InferRequest& request) {
  auto model = Get(name, version);
  if (!model.ok()) return model.status();
  return SubmitFollowingReplace(std::move(model).value(), request);
}

// Model::Submit refuses with UNAVAILABLE only once the model is stopping, and
// Replace stops a model only after publishing its successor (under mu_), so a
// refusal seen here is ordered after the publish and Successor finds the new
// model. The loop ends: each turn needs yet another Replace of the version.
Status Engine::SubmitFollowingReplace(std::shared_ptr<Model> model, const InferRequest& request) {
  for (;;) {
    Status st = model->Submit(request);
    if (st.code() != StatusCode::kUnavailable) return st;
    std::shared_ptr<Model> next = Successor(*model);
    if (next == nullptr) return st;
    model = std::move(next);
  }
}

std::shared_ptr<Model> Engine::Successor(const Model& old) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  if (closed_) return nullptr;
  std::shared_ptr<Model> next = FindLocked(old.config().name, old.config().version);
  return next.get() == &old ? nullptr : next;
}

Expected<std::future<InferResult>> Engine::SubmitForFuture(std::string_view name, int64_t version,
                                                           InferRequest request) {
  auto model = Get(name, version);
  if (!model.ok()) return model.status();
  if (request.sink != nullptr) {
    return InvalidArgument((*model)->config().Describe() +
                           ": SubmitForFuture supplies the completion sink; request.sink must be null");
  }
  std::future<InferResult> future;
  PromiseSink* sink = PromiseSink::Create(&future);
  if (sink == nullptr) {
    return Status(StatusCode::kResourceExhausted, (*model)->config().Describe() + ": out of memory");
  }
  request.sink = sink;
  Status st = SubmitFollowingReplace(std::move(model).value(), request);
  if (!st.ok()) {
    sink->Abandon();  // refused requests are never answered through their sink
    return st;
  }
  return Expected<std::future<InferResult>>(std::move(future));  // `sink` may already be gone
}

Expected<StatsSnapshot> Engine::Stats(std::string_view name, int64_t version) const {
  std::shared_ptr<Model> model;
  {
    std::shared_lock<std::shared_mutex> lock(mu_);
    model = FindLocked(name, version);
    if (model == nullptr) return NotFoundStatus(name, version);
  }
  return model->Stats();
}

std::vector<LoadedModel> Engine::List() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  std::vector<LoadedModel> out;
  for (const auto& [name, versions] : models_) {
    for (const auto& [version, model] : versions) out.push_back(LoadedModel{name, version});
  }
  return out;
}

void Engine::Shutdown(bool drain) {
  std::lock_guard<std::mutex> serial(shutdown_mu_);
  std::vector<std::shared_ptr<Model>> models;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    closed_ = true;
    for (auto& [name, versions] : models_) {
      for (auto& [version, model] : versions) models.push_back(std::move(model));
    }
    models_.clear();
  }
  for (auto& model : models) model->Shutdown(drain);
}

}  // namespace inferline
