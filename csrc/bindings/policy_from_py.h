// Binding-private: a Python routing policy dict -> inferline::ModelPolicy (router.h).
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "inferline/router.h"

namespace inferline_py {

// The dict of python/inferline/routing/policy.py's ModelPolicy.to_core(), plus
// optional core fields (every key checked; an unknown key is an error):
//   {"name": str (optional; must equal `model`),
//    "live": int | None, "served": [int] (optional),
//    "epoch": int = 0, "arms": [{"version", "lo", "hi"}] (optional; default: one
//    arm sending every bucket to "live"), "fallback": [{"model", "version"}] = [],
//    "versions": [{"version", "chain": [{"model", "version"}],
//                  "breaker": {BreakerConfig fields} | None, "cache_bytes": int,
//                  "cache_last_resort": bool}] = []}
// A wrong key, type or a missing "live" without "arms" sets *error to
// INVALID_ARGUMENT naming the field; the core's Validate checks the values.
inferline::ModelPolicy PolicyFromPy(const std::string& model, const pybind11::dict& d, inferline::Status* error);

}  // namespace inferline_py
