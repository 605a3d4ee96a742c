// Binding-private: the core Router as Python holds it (_core.Router), shared by module.cpp and
// native_frontend.cpp (the native gRPC frontend routes through the same Router as Python does).
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "inferline/engine.h"
#include "inferline/router.h"

namespace inferline_py {

// A core Router with the engine it routes over (kept alive by py::keep_alive).
// Destroyed with the GIL released: ~Router waits for every accepted request's
// answer, which a Python backend may need the GIL to compute. The Python Engine
// facade shuts its router down (drops it) before it shuts the engine down.
struct PyRouter {
  explicit PyRouter(inferline::Engine* e) : engine(e), router(e) {}
  inferline::Engine* engine;
  inferline::Router router;
};
struct PyRouterDeleter {
  void operator()(PyRouter* r) const {
    pybind11::gil_scoped_release nogil;
    delete r;
  }
};
using PyRouterPtr = std::unique_ptr<PyRouter, PyRouterDeleter>;

}  // namespace inferline_py
