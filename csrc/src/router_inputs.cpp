// ResolveInputsFor (router.h): which loaded version a routed request's inputs are
// converted for. Shared by every entry point, so that they all convert alike.
#include "inferline/router.h"

namespace inferline {

Expected<std::shared_ptr<Model>> ResolveInputsFor(const Router& router, const Engine& engine,
                                                  std::string_view model, int64_t version) {
  if (version != 0) return engine.Get(model, version);
  const int64_t by_policy = router.DefaultVersion(model);
  if (by_policy != 0) {
    if (std::shared_ptr<Model> m = engine.Find(model, by_policy)) return m;
  }
  if (std::shared_ptr<Model> m = engine.Find(model, Engine::kLatest)) return m;
  for (const FallbackLink& link : router.DefaultChain(model)) {
    const int64_t v = link.version != 0 ? link.version : router.DefaultVersion(link.model);
    if (std::shared_ptr<Model> m = engine.Find(link.model, v != 0 ? v : Engine::kLatest)) return m;
  }
  return engine.Get(model, Engine::kLatest);  // NOT_FOUND naming what is loaded
}

}  // namespace inferline
