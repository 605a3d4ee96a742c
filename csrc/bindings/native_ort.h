// Binding-private: the native ONNX Runtime backend for Python — _core.OrtBackend,
// _core.ort_backend(...) and _core.NATIVE_ORT ("" where built; else why not).
// See python/inferline/_core.pyi.
#pragma once

#include <pybind11/pybind11.h>

#include "inferline/status.h"

namespace inferline_py {

// `raise` turns a non-OK status into the module's CoreError (module.cpp's Throw).
void BindNativeOrt(pybind11::module_& m, void (*raise)(const inferline::Status&));

}  // namespace inferline_py
