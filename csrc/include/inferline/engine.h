// inferline/engine.h — the entry point for C++ hosts: loaded model versions by (name, version).
//
//   Engine engine;
//   Status st = engine.Load(config, std::make_shared<MyBackend>());   // one Model per version
//   InferRequest req;
//   req.inputs = {TensorView{rows.data(), DataType::kFloat32, Shape{1, 64}}};
//   Expected<std::future<InferResult>> fut = engine.SubmitForFuture("digits", Engine::kLatest, req);
//   if (fut.ok()) { InferResult r = fut->get(); /* r.status, r.outputs */ }
//   StatsSnapshot s = engine.Stats("digits").value();
//   engine.Replace(new_config, std::make_shared<MyBackend>());          // hot reload, no gap
//   engine.Shutdown(/*drain=*/true);                                   // every request answered
//
// An Engine owns one Model (model.h: queue, micro-batching, executors, stats) per
// loaded version and routes by name and version; kLatest means the highest
// version loaded under that name at the time of the call. Versions are >= 1.
// Nothing here throws (results are Status / Expected) and nothing needs Python.
//
// Answers: every request accepted by Submit / SubmitForFuture (OK returned) is
// answered exactly once — computed, or with a non-OK InferResult::status
// (DEADLINE_EXCEEDED, CANCELLED by Unload/Shutdown without drain, the backend's
// error). A refused request (non-OK returned) is never answered through a sink.
//
// Thread-safety: every method may be called from any number of threads at once,
// concurrently with each other, with these exceptions:
//  - Unload, Replace, Shutdown and the destructor wait for executor threads to finish, so
//    they must not be called from a completion callback or a Backend::Run (that
//    would deadlock); the destructor must not race with any other call.
//  - A std::shared_ptr<Model> from Find stays valid after Unload/Shutdown; its
//    Submit then returns UNAVAILABLE. Releasing it never blocks on executors of a
//    model the engine already shut down.
// Lookups take a shared (reader) lock held only for the map lookup; Submit runs
// outside it. For the hottest paths a host can Find() once and call
// Model::Submit directly, which takes no engine lock at all.
#pragma once

#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "inferline/backend.h"
#include "inferline/clock.h"
#include "inferline/completion.h"
#include "inferline/model.h"
#include "inferline/stats.h"
#include "inferline/status.h"

namespace inferline {

struct LoadedModel {
  std::string name;
  int64_t version = 0;
};

class Engine {
 public:
  static constexpr int64_t kLatest = 0;  // "the highest loaded version"

  // `clock` (default SteadyClock) is passed to every model; it must outlive the engine
  // and any Model a caller still holds from Find/Get.
  explicit Engine(Clock* clock = nullptr) noexcept;
  ~Engine();  // Shutdown(true)
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates `config` (INVALID_ARGUMENT naming the field, as Model::Create) and
  // starts serving it. ALREADY_EXISTS if that (name, version) is loaded (a hot
  // reload of a loaded version is Replace); INVALID_ARGUMENT if version < 1;
  // UNAVAILABLE after Shutdown.
  Status Load(ModelConfig config, std::shared_ptr<Backend> backend);

  // Hot reload: starts `config` (validated as Load), publishes it in place of the
  // loaded (name, version) in one step, so no lookup ever misses the version, then
  // shuts the old model down (its queued requests computed when `drain`, else
  // CANCELLED) and returns when its executors have stopped. A Submit that reached
  // the old model as it stopped is resubmitted to the new one (see Submit). Loads
  // the version if it is not loaded. FAILED_PRECONDITION if the signature (input
  // and output names, dtypes, shapes) differs from the loaded one: callers holding
  // the version rely on it, and a new signature needs a new version. Other errors
  // as Load; on any error the loaded version keeps serving.
  Status Replace(ModelConfig config, std::shared_ptr<Backend> backend, bool drain = true);

  // Stops routing to (name, version) at once, then answers its queued requests
  // (computed when `drain`, else CANCELLED) and returns when its executors have
  // stopped. NOT_FOUND if not loaded. version may be kLatest.
  Status Unload(std::string_view name, int64_t version, bool drain = true);

  // The model, or nullptr if (name, version) is not loaded.
  std::shared_ptr<Model> Find(std::string_view name, int64_t version = kLatest) const;
  // The model, or NOT_FOUND naming the model and the versions loaded under that name.
  Expected<std::shared_ptr<Model>> Get(std::string_view name, int64_t version = kLatest) const;

  // Model::Submit on (name, version): NOT_FOUND if it is not loaded, UNAVAILABLE
  // after Shutdown, else whatever Model::Submit returns. If the model refuses
  // because a Replace is shutting it down, the request goes to its replacement,
  // so a swap refuses nothing. request.sink receives the answer; it and the input
  // memory must stay valid until then.
  Status Submit(std::string_view name, int64_t version, const InferRequest& request);

  // Submit with a one-shot PromiseSink: the future becomes ready with the answer.
  // request.sink must be null (INVALID_ARGUMENT otherwise). The input memory must
  // stay valid until the future is ready. A refused request returns its Status
  // and no future.
  Expected<std::future<InferResult>> SubmitForFuture(std::string_view name, int64_t version,
                                                     InferRequest request);

  // Stats of (name, version), or NOT_FOUND.
  Expected<StatsSnapshot> Stats(std::string_view name, int64_t version = kLatest) const;

  // Every loaded (name, version), sorted by name, then version.
  std::vector<LoadedModel> List() const;

  // Refuses further Load/Submit (UNAVAILABLE), then shuts down every model
  // (computed when `drain`, else CANCELLED) and returns when all have stopped.
  // Idempotent: a later or concurrent call returns once the first one is done.
  // (A model that a concurrent Unload already took out is stopped by that Unload.)
  void Shutdown(bool drain = true);

  // Now on the engine's clock, the time base of InferRequest::deadline_us.
  uint64_t NowUs() const noexcept;

 private:
  using Versions = std::map<int64_t, std::shared_ptr<Model>>;
  // Requires mu_ (shared or exclusive). nullptr if absent.
  std::shared_ptr<Model> FindLocked(std::string_view name, int64_t version) const;
  Status NotFoundStatus(std::string_view name, int64_t version) const;
  // Model::Submit on `model`, then on its replacements while a Replace stops it.
  Status SubmitFollowingReplace(std::shared_ptr<Model> model, const InferRequest& request);
  // The model now published under `old`'s (name, version) if it is not `old`, else
  // nullptr (unloaded, engine shut down, or still `old`).
  std::shared_ptr<Model> Successor(const Model& old) const;

  Clock* clock_;
  std::mutex shutdown_mu_;  // serialises Shutdown calls; never taken with mu_ held
  mutable std::shared_mutex mu_;
  std::map<std::string, Versions, std::less<>> models_;  // requires mu_
  bool closed_ = false;                                  // requires mu_
};

}  // namespace inferline
