// Binding-private: CUDA placement for Python — _core.DeviceArray, _core.device_backend,
// _core.cuda_status and _core.cuda_mem_info (see python/inferline/_core.pyi).
#pragma once

#include <pybind11/pybind11.h>

#include "inferline/status.h"

namespace inferline_py {

// `raise` turns a non-OK status into the module's CoreError (module.cpp's Throw).
void BindDevice(pybind11::module_& m, void (*raise)(const inferline::Status&));

}  // namespace inferline_py
