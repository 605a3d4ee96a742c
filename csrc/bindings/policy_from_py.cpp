// Binding-private: Python routing policy dicts -> ModelPolicy (see policy_from_py.h).
#include "policy_from_py.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <initializer_list>
#include <string_view>
#include <vector>

namespace py = pybind11;
using namespace inferline;

namespace inferline_py {
namespace {

// Thrown inside this file only; PolicyFromPy turns it into *error.
struct BadField {
  std::string message;
};

[[noreturn]] void Bad(const std::string& where, const std::string& what) { throw BadField{where + ": " + what}; }

py::dict AsDict(const py::handle& h, const std::string& where) {
  if (!py::isinstance<py::dict>(h)) Bad(where, "expected a dict, got " + std::string(py::str(py::type::of(h).attr("__name__"))));
  return py::reinterpret_borrow<py::dict>(h);
}

py::list AsList(const py::handle& h, const std::string& where) {
  if (!py::isinstance<py::list>(h) && !py::isinstance<py::tuple>(h)) Bad(where, "expected a list");
  return py::list(py::reinterpret_borrow<py::object>(h));
}

void CheckKeys(const py::dict& d, std::initializer_list<std::string_view> known, const std::string& where) {
  for (auto item : d) {
    std::string key = py::str(item.first);
    if (std::find(known.begin(), known.end(), key) == known.end()) Bad(where, "unknown field '" + key + "'");
  }
}

template <class T>
T Get(const py::dict& d, const char* key, const std::string& where, T fallback, bool required = false) {
  if (!d.contains(key)) {
    if (required) Bad(where + "." + key, "missing");
    return fallback;
  }
  py::handle v = d[key];
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if (!py::isinstance<py::int_>(v) || py::isinstance<py::bool_>(v)) Bad(where + "." + key, "expected an int");
    if constexpr (std::is_unsigned_v<T>) {
      if (v.cast<long long>() < 0) Bad(where + "." + key, "must be >= 0");
    }
  }
  try {
    return v.cast<T>();
  } catch (const py::cast_error&) {
    Bad(where + "." + key, "wrong type " + std::string(py::str(py::type::of(v).attr("__name__"))));
  }
}

std::vector<FallbackLink> LinksFromPy(const py::handle& h, const std::string& where) {
  std::vector<FallbackLink> links;
  size_t i = 0;
  for (auto item : AsList(h, where)) {
    std::string at = where + "[" + std::to_string(i++) + "]";
    py::dict l = AsDict(item, at);
    CheckKeys(l, {"model", "version"}, at);
    links.push_back(FallbackLink{Get<std::string>(l, "model", at, "", true), Get<int64_t>(l, "version", at, 0)});
  }
  return links;
}

BreakerConfig BreakerFromPy(const py::dict& b, const std::string& at) {
  CheckKeys(b, {"consecutive_failures", "error_rate", "min_requests", "window_us", "open_us", "half_open_probes"}, at);
  BreakerConfig c;
  c.consecutive_failures = Get<uint32_t>(b, "consecutive_failures", at, c.consecutive_failures);
  c.error_rate = Get<double>(b, "error_rate", at, c.error_rate);
  c.min_requests = Get<uint32_t>(b, "min_requests", at, c.min_requests);
  c.window_us = Get<uint64_t>(b, "window_us", at, c.window_us);
  c.open_us = Get<uint64_t>(b, "open_us", at, c.open_us);
  c.half_open_probes = Get<uint32_t>(b, "half_open_probes", at, c.half_open_probes);
  return c;
}

VersionPolicy VersionFromPy(const py::handle& h, const std::string& at) {
  py::dict d = AsDict(h, at);
  CheckKeys(d, {"version", "chain", "breaker", "cache_bytes", "cache_last_resort"}, at);
  VersionPolicy v;
  v.version = Get<int64_t>(d, "version", at, 0, true);
  if (d.contains("chain")) v.chain = LinksFromPy(d["chain"], at + ".chain");
  if (d.contains("breaker") && !d["breaker"].is_none()) v.breaker = BreakerFromPy(AsDict(d["breaker"], at + ".breaker"), at + ".breaker");
  v.cache_bytes = Get<uint64_t>(d, "cache_bytes", at, 0);
  v.cache_last_resort = Get<bool>(d, "cache_last_resort", at, false);
  return v;
}

std::vector<RouteArm> ArmsFromPy(const py::dict& d, const std::string& where) {
  std::vector<RouteArm> arms;
  if (!d.contains("arms")) {
    if (!d.contains("live") || d["live"].is_none()) Bad(where + ".live", "no live version and no arms");
    arms.push_back(RouteArm{Get<int64_t>(d, "live", where, 0), 0, kRouteBuckets});
    return arms;
  }
  size_t i = 0;
  for (auto item : AsList(d["arms"], where + ".arms")) {
    std::string at = where + ".arms[" + std::to_string(i++) + "]";
    py::dict a = AsDict(item, at);
    CheckKeys(a, {"version", "lo", "hi"}, at);
    arms.push_back(RouteArm{Get<int64_t>(a, "version", at, 0, true), Get<uint32_t>(a, "lo", at, 0, true),
                            Get<uint32_t>(a, "hi", at, 0, true)});
  }
  return arms;
}

// Every version the arms and the per-version entries name is among "served" (when given).
void CheckServed(const py::dict& d, const ModelPolicy& p, const std::string& where) {
  if (!d.contains("served")) return;
  std::vector<int64_t> served;
  size_t i = 0;
  for (auto item : AsList(d["served"], where + ".served")) {
    std::string at = where + ".served[" + std::to_string(i++) + "]";
    if (!py::isinstance<py::int_>(item)) Bad(at, "expected an int");
    served.push_back(item.cast<int64_t>());
  }
  auto is_served = [&](int64_t v) { return std::find(served.begin(), served.end(), v) != served.end(); };
  for (size_t k = 0; k < p.route.arms.size(); ++k) {
    if (!is_served(p.route.arms[k].version)) {
      Bad(where + (d.contains("arms") ? ".arms[" + std::to_string(k) + "].version" : std::string(".live")),
          "version " + std::to_string(p.route.arms[k].version) + " is not served");
    }
  }
  for (size_t k = 0; k < p.versions.size(); ++k) {
    if (!is_served(p.versions[k].version)) {
      Bad(where + ".versions[" + std::to_string(k) + "].version",
          "version " + std::to_string(p.versions[k].version) + " is not served");
    }
  }
}

}  // namespace

ModelPolicy PolicyFromPy(const std::string& model, const py::dict& d, Status* error) {
  const std::string where = "router policy for '" + model + "'";
  ModelPolicy p;
  try {
    CheckKeys(d, {"name", "live", "served", "epoch", "arms", "fallback", "versions"}, where);
    if (d.contains("name") && Get<std::string>(d, "name", where, "") != model) {
      Bad(where + ".name", "'" + std::string(py::str(d["name"])) + "' is not the model published");
    }
    if (d.contains("live") && !d["live"].is_none()) Get<int64_t>(d, "live", where, 0);  // type check
    p.route.epoch = Get<uint64_t>(d, "epoch", where, 0);
    p.route.arms = ArmsFromPy(d, where);
    if (d.contains("fallback")) p.route.fallback = LinksFromPy(d["fallback"], where + ".fallback");
    if (d.contains("versions")) {
      size_t i = 0;
      for (auto item : AsList(d["versions"], where + ".versions")) {
        p.versions.push_back(VersionFromPy(item, where + ".versions[" + std::to_string(i++) + "]"));
      }
    }
    CheckServed(d, p, where);
    *error = Status::Ok();
  } catch (const BadField& e) {
    *error = InvalidArgument(e.message);
  }
  return p;
}

}  // namespace inferline_py
