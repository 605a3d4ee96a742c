// Binding-private: the native gRPC frontend for Python — _core.NativeFrontend and
// _core.NATIVE_FRONTEND ("" where built; else why not). See python/inferline/_core.pyi.
#pragma once

#include <pybind11/pybind11.h>

#include "inferline/status.h"

namespace inferline_py {

// `raise` turns a non-OK status into the module's CoreError (module.cpp's Throw).
void BindNativeFrontend(pybind11::module_& m, void (*raise)(const inferline::Status&));

}  // namespace inferline_py
