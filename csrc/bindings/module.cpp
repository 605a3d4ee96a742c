// The one pybind11 module, inferline._core: convert, check, release the GIL, call.
// Adapters that exist only for Python are named Class_Method and live here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "inferline/backend.h"
#include "inferline/completion.h"
#include "inferline/engine.h"
#include "inferline/model.h"
#include "inferline/router.h"
#include "device_backend.h"
#include "native_frontend.h"
#include "native_loadgen.h"
#include "native_ort.h"
#include "policy_from_py.h"
#include "py_histogram.h"
#include "py_router.h"

namespace py = pybind11;
using namespace inferline;

namespace {

// ---- errors: a non-OK Status becomes _core.CoreError(code, message) -----------
// One exception type, defined here, carrying the gRPC code; inferline.errors
// maps it to its classes (from_core_error), so the binding never imports the
// package it is part of.
struct StatusError {
  Status status;
};

[[noreturn]] void Throw(const Status& st) { throw StatusError{st}; }

py::handle core_error;  // _core.CoreError; set at import, lives as long as the module

void TranslateStatusError(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const StatusError& e) {
    py::object exc = py::reinterpret_borrow<py::object>(core_error)(e.status.message());
    exc.attr("code") = static_cast<int>(e.status.code());
    exc.attr("message") = e.status.message();
    PyErr_SetObject(core_error.ptr(), exc.ptr());
  }
}

// ---- dtypes and arrays --------------------------------------------------------
bool DataTypeOf(const py::dtype& dt, DataType* out) {
  char kind = dt.kind();
  ssize_t size = dt.itemsize();
  std::string name = kind == 'b' ? "bool" : kind == 'f' ? "float" : kind == 'i' ? "int" : kind == 'u' ? "uint" : "";
  if (name.empty()) return false;
  if (kind != 'b') name += std::to_string(size * 8);
  return ParseDataType(name, out);
}

py::dtype NumpyDtype(DataType dt) {
  static const char* kNames[] = {"bool",  "uint8", "uint16", "uint32",  "uint64",  "int8",
                                 "int16", "int32", "int64",  "float16", "float32", "float64"};
  return py::dtype(kNames[static_cast<int>(dt)]);
}

// A NumPy array over a tensor's bytes, keeping them alive; no copy.
py::array ToNumpy(const Tensor& t) {
  std::vector<ssize_t> shape(t.shape.dims, t.shape.dims + t.shape.rank);
  auto* keep = new std::shared_ptr<void>(t.owner);
  py::capsule base(keep, [](void* p) { delete static_cast<std::shared_ptr<void>*>(p); });
  return py::array(NumpyDtype(t.dtype), shape, {}, t.data, base);
}

// Shares ownership of a NumPy array's buffer with the core.
Tensor FromNumpy(const py::array& arr) {
  Tensor t;
  if (!DataTypeOf(arr.dtype(), &t.dtype)) throw std::invalid_argument("unsupported dtype " + std::string(py::str(arr.dtype())));
  if (arr.ndim() > Shape::kMaxRank) throw std::invalid_argument("more than 8 dimensions");
  t.shape.rank = static_cast<int32_t>(arr.ndim());
  for (ssize_t d = 0; d < arr.ndim(); ++d) t.shape.dims[d] = arr.shape(d);
  t.data = const_cast<void*>(arr.data());
  auto* ref = new py::object(arr);
  t.owner = std::shared_ptr<void>(ref, [](void* p) {
    if (!Py_IsInitialized()) return;  // interpreter gone: leak rather than crash
    py::gil_scoped_acquire gil;
    delete static_cast<py::object*>(p);
  });
  return t;
}

// ---- config: plain Python dicts -> ModelConfig ------------------------------
TensorSpec SpecFromPy(const py::handle& h) {
  auto d = h.cast<py::dict>();
  TensorSpec s;
  s.name = d["name"].cast<std::string>();
  std::string dt = d["dtype"].cast<std::string>();
  if (!ParseDataType(dt, &s.dtype)) Throw(InvalidArgument("tensor '" + s.name + "': unknown dtype '" + dt + "'"));
  auto dims = d["shape"].cast<std::vector<int64_t>>();
  if (dims.size() > Shape::kMaxRank) Throw(InvalidArgument("tensor '" + s.name + "': more than 8 dimensions"));
  s.shape.rank = static_cast<int32_t>(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) s.shape.dims[i] = dims[i];
  return s;
}

PreprocessSpec PreprocessFromPy(const py::handle& h) {
  PreprocessSpec p;
  if (h.is_none()) return p;
  auto d = h.cast<py::dict>();
  auto kind = d["kind"].cast<std::string>();
  if (kind == "tabular") {
    p.kind = PreprocessSpec::Kind::kTabular;
    p.tabular.mean = d["mean"].cast<std::vector<float>>();
    p.tabular.std = d["std"].cast<std::vector<float>>();
    p.tabular.nan_fill = d["nan_fill"].cast<float>();
    p.tabular.clip_lo = d["clip_lo"].cast<float>();
    p.tabular.clip_hi = d["clip_hi"].cast<float>();
  } else if (kind == "image") {
    p.kind = PreprocessSpec::Kind::kImage;
    p.image.out_h = d["height"].cast<int32_t>();
    p.image.out_w = d["width"].cast<int32_t>();
    p.image.mean = d["mean"].cast<std::vector<float>>();
    p.image.std = d["std"].cast<std::vector<float>>();
  } else if (kind != "none") {
    Throw(InvalidArgument("preprocessing.kind must be 'none', 'tabular' or 'image', got '" + kind + "'"));
  }
  return p;
}

// A Python object as ModelConfig::host_data: released with the GIL held.
std::shared_ptr<const void> HostData(py::object obj) {
  if (obj.is_none()) return nullptr;
  auto* ref = new py::object(std::move(obj));
  return std::shared_ptr<const void>(ref, [](const void* p) {
    if (!Py_IsInitialized()) return;  // interpreter gone: leak rather than crash
    py::gil_scoped_acquire gil;
    delete static_cast<const py::object*>(p);
  });
}

ModelConfig ConfigFromPy(const py::dict& d) {
  ModelConfig c;
  c.name = d["name"].cast<std::string>();
  c.version = d["version"].cast<int64_t>();
  for (auto s : d["inputs"]) c.inputs.push_back(SpecFromPy(s));
  for (auto s : d["outputs"]) c.outputs.push_back(SpecFromPy(s));
  for (auto p : d["preprocessing"]) c.preprocessing.push_back(PreprocessFromPy(p));
  auto b = d["batching"].cast<py::dict>();
  c.batching.max_batch_size = b["max_batch_size"].cast<uint32_t>();
  c.batching.max_queue_delay_us = b["max_queue_delay_us"].cast<uint64_t>();
  c.batching.preferred_batch_sizes = b["preferred_batch_sizes"].cast<std::vector<uint32_t>>();
  c.batching.deadline_slack_us = b["deadline_slack_us"].cast<uint64_t>();
  auto mode = b["mode"].cast<std::string>();
  if (mode == "deadline_aware") c.batching.mode = BatchingMode::kDeadlineAware;
  else if (mode == "fixed_delay") c.batching.mode = BatchingMode::kFixedDelay;
  else Throw(InvalidArgument(c.Describe() + ": batching.mode must be 'deadline_aware' or 'fixed_delay', got '" + mode + "'"));
  c.instances = d["instances"].cast<uint32_t>();
  c.queue_capacity = d["queue_capacity"].cast<uint32_t>();
  c.priority_levels = d["priority_levels"].cast<uint32_t>();
  if (d.contains("queue")) {
    auto q = d["queue"].cast<py::dict>();
    auto order = q["overload"].cast<std::string>();
    if (order == "newest_first") c.queue.overload = OverloadOrder::kNewestFirst;
    else if (order == "shed_oldest") c.queue.overload = OverloadOrder::kShedOldest;
    else if (order == "fifo") c.queue.overload = OverloadOrder::kFifo;
    else Throw(InvalidArgument(c.Describe() + ": queue.overload must be 'newest_first', 'shed_oldest' or 'fifo', got '" + order + "'"));
    c.queue.target_us = q["target_us"].cast<uint64_t>();
    c.queue.interval_us = q["interval_us"].cast<uint64_t>();
  }
  if (d.contains("gpu") && !d["gpu"].is_none()) {
    auto g = d["gpu"].cast<py::dict>();
    c.gpu.device = g["device"].cast<int32_t>();
    if (c.gpu.device < 0) Throw(InvalidArgument(c.Describe() + ": gpu.device must be >= 0"));
    c.gpu.high_priority = g.contains("high_priority") && g["high_priority"].cast<bool>();
  }
  return c;
}

// ---- a Python callable as a backend ------------------------------------------
// Called once per batch with {input name: zero-copy array}; returns {output name:
// array} or a sequence of arrays in declared output order. The GIL is held only
// for the call and the conversions.
class PyCallableBackend final : public Backend {
 public:
  PyCallableBackend(py::object fn, std::vector<std::string> output_names)
      : fn_(std::move(fn)), output_names_(std::move(output_names)) {}
  ~PyCallableBackend() override {
    py::gil_scoped_acquire gil;
    fn_ = py::object();
  }

  Status Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) override {
    py::gil_scoped_acquire gil;
    try {
      py::dict args;
      for (const auto& in : inputs) args[py::str(in.name)] = ToNumpy(in.tensor);
      py::object result = fn_(args);
      return Collect(result, outputs);
    } catch (py::error_already_set& e) {
      return Internal(std::string(e.what()));
    } catch (const std::exception& e) {
      return Internal(e.what());
    }
  }

 private:
  Status Collect(const py::object& result, std::vector<NamedTensor>* outputs) {
    bool is_map = py::isinstance<py::dict>(result);
    bool is_seq = py::isinstance<py::list>(result) || py::isinstance<py::tuple>(result);
    if (!is_map && !is_seq && output_names_.size() == 1) {
      outputs->push_back(NamedTensor{output_names_[0], FromNumpy(py::array::ensure(result, py::array::c_style))});
      return Status::Ok();
    }
    if (is_seq && py::len(result) != output_names_.size()) {
      return Internal("backend returned " + std::to_string(py::len(result)) + " outputs, expected " +
                      std::to_string(output_names_.size()));
    }
    for (size_t k = 0; k < output_names_.size(); ++k) {
      const std::string& name = output_names_[k];
      py::object obj;
      if (is_map) {
        auto m = result.cast<py::dict>();
        if (!m.contains(name)) return Internal("backend returned no output '" + name + "'");
        obj = m[py::str(name)];
      } else if (is_seq) {
        obj = result.cast<py::sequence>()[k];
      } else {
        return Internal("backend must return a dict or a sequence of arrays");
      }
      py::array arr = py::array::ensure(obj, py::array::c_style);
      if (!arr) return Internal("backend output '" + name + "' is not array-like");
      outputs->push_back(NamedTensor{name, FromNumpy(arr)});
    }
    return Status::Ok();
  }

  py::object fn_;
  std::vector<std::string> output_names_;
};

// ---- Engine and Model adapters ------------------------------------------------
// The Engine is destroyed with the GIL released: its Shutdown waits for executors,
// which may need the GIL to finish a Python backend's batch.
struct EngineDeleter {
  void operator()(Engine* e) const {
    py::gil_scoped_release nogil;
    delete e;
  }
};
using EnginePtr = std::unique_ptr<Engine, EngineDeleter>;

// `host`: any Python object, kept with the version (Model.host); the Python
// Engine keeps its ModelConfig there.
void Engine_Load(Engine& e, const py::dict& config, std::shared_ptr<Backend> backend, py::object host) {
  ModelConfig c = ConfigFromPy(config);
  c.host_data = HostData(std::move(host));
  Status st;
  {
    py::gil_scoped_release nogil;  // a failed start joins executors that may need the GIL
    st = e.Load(std::move(c), std::move(backend));
  }
  if (!st.ok()) Throw(st);
}

void Engine_Replace(Engine& e, const py::dict& config, std::shared_ptr<Backend> backend, py::object host,
                    bool drain) {
  ModelConfig c = ConfigFromPy(config);
  c.host_data = HostData(std::move(host));
  Status st;
  {
    py::gil_scoped_release nogil;  // drains the old model
    st = e.Replace(std::move(c), std::move(backend), drain);
  }
  if (!st.ok()) Throw(st);
}

void Engine_Unload(Engine& e, const std::string& name, int64_t version, bool drain) {
  Status st;
  {
    py::gil_scoped_release nogil;
    st = e.Unload(name, version, drain);
  }
  if (!st.ok()) Throw(st);
}

std::shared_ptr<Model> Engine_Get(const Engine& e, const std::string& name, int64_t version) {
  auto model = e.Get(name, version);
  if (!model.ok()) Throw(model.status());
  return std::move(model).value();
}

py::list Engine_List(const Engine& e) {
  py::list out;
  for (const LoadedModel& m : e.List()) out.append(py::make_tuple(m.name, m.version));
  return out;
}

// One request input as a C-contiguous array of a core dtype. Array-likes are
// converted and non-contiguous arrays copied (only then); `keep` receives the
// array, which must stay alive until the answer arrives.
TensorView InputView(const ModelConfig& c, size_t i, PyObject* obj, py::list& keep) {
  auto arr = py::reinterpret_borrow<py::object>(obj);
  if (!py::isinstance<py::array>(arr) || !(py::reinterpret_borrow<py::array>(arr).flags() & py::array::c_style)) {
    arr = py::array::ensure(arr, py::array::c_style);
    if (!arr) {
      PyErr_Clear();
      Throw(InvalidArgument(c.Describe() + " input '" + c.inputs[i].name + "': expected an array of " +
                            DataTypeName(c.inputs[i].dtype)));
    }
  }
  auto a = py::reinterpret_borrow<py::array>(arr);
  keep.append(a);
  TensorView v;
  if (!DataTypeOf(a.dtype(), &v.dtype)) {  // a dtype the core has no name for: the core cannot say it
    Throw(InvalidArgument(c.Describe() + " input '" + c.inputs[i].name + "': expected " +
                          DataTypeName(c.inputs[i].dtype) + ", got unsupported dtype " + std::string(py::str(a.dtype()))));
  }
  if (a.ndim() > Shape::kMaxRank) {  // a Shape cannot hold it
    Throw(InvalidArgument(c.Describe() + " input '" + c.inputs[i].name + "': expected shape " +
                          c.inputs[i].shape.ToString() + ", got " + std::to_string(a.ndim()) + " dimensions"));
  }
  v.shape.rank = static_cast<int32_t>(a.ndim());
  for (ssize_t d = 0; d < a.ndim(); ++d) v.shape.dims[d] = a.shape(d);
  v.data = a.data();
  return v;
}

// Names in `inputs` that the config does not declare, and declared names missing.
[[noreturn]] void ThrowNameMismatch(const ModelConfig& c, const py::dict& inputs) {
  std::string unknown, missing;
  for (auto item : inputs) {
    std::string name = py::str(item.first);
    bool known = std::any_of(c.inputs.begin(), c.inputs.end(), [&](const TensorSpec& s) { return s.name == name; });
    if (!known) unknown += (unknown.empty() ? "'" : ", '") + name + "'";
  }
  for (const auto& s : c.inputs) {
    if (!inputs.contains(s.name)) missing += (missing.empty() ? "'" : ", '") + s.name + "'";
  }
  std::string declared;
  for (const auto& s : c.inputs) declared += (declared.empty() ? "" : ", ") + s.name;
  std::string msg = c.Describe() + ":";
  if (!unknown.empty()) msg += " unknown input " + unknown + ";";
  if (!missing.empty()) msg += " input " + missing + ": missing from the request;";
  msg.back() = ' ';
  Throw(InvalidArgument(msg + "(inputs: " + declared + ")"));
}

// The request for `model`: inputs ({name: array}) converted to its config's
// input order, tag, sink, priority and a deadline. The core checks dtypes and
// shapes (naming model, version, input and what it expected); this only
// converts. timeout_us is relative (0 = none); the deadline is taken on the
// model's clock here, so Python never reads the clock per request.
InferRequest RequestFor(const Model& model, const py::dict& inputs, uint64_t tag, PollableSink& sink,
                        uint32_t priority, uint64_t timeout_us, py::list& keep) {
  const ModelConfig& c = model.config();
  InferRequest req;
  req.tag = tag;
  req.sink = &sink;
  req.priority = priority;
  if (timeout_us != 0) {
    constexpr uint64_t kMax = std::numeric_limits<int64_t>::max();
    uint64_t now = model.NowUs();
    req.deadline_us = timeout_us >= kMax - now ? kMax : now + timeout_us;
  }
  req.inputs.resize(c.inputs.size());
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    PyObject* obj = PyDict_GetItemString(inputs.ptr(), c.inputs[i].name.c_str());
    if (obj == nullptr) ThrowNameMismatch(c, inputs);
    req.inputs[i] = InputView(c, i, obj, keep);
  }
  if (py::len(inputs) != c.inputs.size()) ThrowNameMismatch(c, inputs);
  return req;
}

void Engine_Submit(Engine& e, const std::string& name, int64_t version, const py::dict& inputs, uint64_t tag,
                   PollableSink& sink, uint32_t priority, uint64_t timeout_us, py::list& keep) {
  std::shared_ptr<Model> model = Engine_Get(e, name, version);
  InferRequest req = RequestFor(*model, inputs, tag, sink, priority, timeout_us, keep);
  // By the concrete version: a Replace in between keeps the signature converted
  // for. Submit never blocks, so the GIL stays held (releasing it costs more).
  Status st = e.Submit(name, model->config().version, req);
  if (!st.ok()) Throw(st);
}

// ---- Router adapters ----------------------------------------------------------
using inferline_py::HistogramToPy;
using inferline_py::PyRouter;
using inferline_py::PyRouterPtr;

void Router_Publish(PyRouter& r, const std::string& model, const py::dict& policy) {
  Status st;
  ModelPolicy p = inferline_py::PolicyFromPy(model, policy, &st);
  if (!st.ok()) Throw(st);
  st = r.router.Publish(model, std::move(p));
  if (!st.ok()) Throw(st);
}

void Router_Remove(PyRouter& r, const std::string& model) {
  Status st = r.router.Remove(model);
  if (!st.ok()) Throw(st);
}

// The version a routed request is converted for (router.h ResolveInputsFor).
std::shared_ptr<Model> ConvertFor(const PyRouter& r, const std::string& model, int64_t version) {
  Expected<std::shared_ptr<Model>> m = ResolveInputsFor(r.router, *r.engine, model, version);
  if (!m.ok()) Throw(m.status());
  return std::move(m).value();
}

// A flag Python sets to withdraw a queued request (InferRequest::cancelled); kept
// alive in the request's `keep` list until the request is answered.
struct CancelFlag {
  std::atomic<bool> set{false};
};

// Engine_Submit through the router; routing_key: bytes, str or None (hash the inputs);
// cancel: a CancelFlag or None.
void Router_Submit(PyRouter& r, const std::string& model, int64_t version, const py::object& routing_key,
                   const py::dict& inputs, uint64_t tag, PollableSink& sink, uint32_t priority, uint64_t timeout_us,
                   py::list& keep, const py::object& cancel) {
  if (version < 0) Throw(InvalidArgument("router: version " + std::to_string(version) + " must be >= 0"));
  std::shared_ptr<Model> m = ConvertFor(r, model, version);
  InferRequest req = RequestFor(*m, inputs, tag, sink, priority, timeout_us, keep);
  if (!cancel.is_none()) {
    req.cancelled = &cancel.cast<CancelFlag&>().set;
    keep.append(cancel);
  }
  RouteRequest route;
  route.version = version;
  std::string key;
  if (!routing_key.is_none()) {
    if (py::isinstance<py::bytes>(routing_key)) key = routing_key.cast<std::string>();
    else if (py::isinstance<py::str>(routing_key)) key = routing_key.cast<std::string>();  // UTF-8
    else Throw(InvalidArgument("router: routing_key must be bytes, str or None"));
    route.routing_key = key;
    route.has_routing_key = true;
  }
  route.inputs_for = m;
  // Without a policy the router passes straight to the engine: pin the version
  // converted for, as Engine_Submit does.
  if (version == 0 && r.router.DefaultVersion(model) == 0) route.version = m->config().version;
  Status st = r.router.Submit(model, route, req);
  if (!st.ok()) Throw(st);
}

py::dict Router_Stats(const PyRouter& r, const std::string& model) {
  Expected<RouterStats> got = r.router.Stats(model);
  if (!got.ok()) Throw(got.status());
  const RouterStats& s = got.value();
  py::dict d;
  d["epoch"] = s.epoch;
  d["requests"] = s.requests;
  d["answered_ok"] = s.answered_ok;
  d["answered_error"] = s.answered_error;
  d["answered_by_fallback"] = s.answered_by_fallback;
  d["cache_hits"] = s.cache_hits;
  d["cache_misses"] = s.cache_misses;
  py::dict fallbacks;
  for (size_t i = 1; i < s.fallbacks.size(); ++i) {
    fallbacks[FallbackReasonName(static_cast<FallbackReason>(i))] = s.fallbacks[i];
  }
  d["fallbacks"] = fallbacks;
  py::list versions;
  for (const RouterVersionStats& v : s.versions) {
    py::dict vd;
    vd["version"] = v.version;
    vd["primary"] = v.primary;
    vd["answered"] = v.answered;
    vd["failed"] = v.failed;
    vd["breaker"] = v.breaker ? py::object(py::str(BreakerStateName(*v.breaker))) : py::object(py::none());
    const BreakerCounters& b = v.breaker_counters;
    vd["breaker_counters"] = py::dict(py::arg("opened") = b.opened, py::arg("reopened") = b.reopened,
                                      py::arg("recovered") = b.recovered, py::arg("rejected") = b.rejected,
                                      py::arg("probes") = b.probes, py::arg("probe_successes") = b.probe_successes,
                                      py::arg("probe_failures") = b.probe_failures);
    if (v.cache) {
      const CacheStats& c = *v.cache;
      vd["cache"] = py::dict(py::arg("hits") = c.hits, py::arg("misses") = c.misses,
                             py::arg("insertions") = c.insertions, py::arg("evictions") = c.evictions,
                             py::arg("bytes") = c.bytes, py::arg("entries") = c.entries);
    } else {
      vd["cache"] = py::none();
    }
    versions.append(vd);
  }
  d["versions"] = versions;
  return d;
}

py::object Model_Host(const Model& m) {
  const auto& host = m.config().host_data;
  if (host == nullptr) return py::none();
  return *static_cast<const py::object*>(host.get());
}

py::dict Model_Stats(const Model& m) {
  StatsSnapshot s = m.Stats();
  py::dict d;
  d["requests"] = s.requests;
  d["rows"] = s.rows;
  d["batches"] = s.batches;
  d["rejected"] = s.rejected;
  d["deadline_missed"] = s.deadline_missed;
  d["errors"] = s.errors;
  d["cancelled"] = s.cancelled;
  d["shed"] = s.shed;
  d["last_batch_end_us"] = s.last_batch_end_us;
  d["queued_rows"] = s.queued_rows;
  d["queue_us"] = HistogramToPy(s.queue_us);
  d["compute_us"] = HistogramToPy(s.compute_us);
  d["end_to_end_us"] = HistogramToPy(s.end_to_end_us);
  d["batch_size_counts"] = s.batch_size_counts;
  d["mean_batch_size"] = s.mean_batch_size();
  d["fill_ratio"] = s.fill_ratio();
  d["max_batch_size"] = s.max_batch_size;
  return d;
}

// [(tag, status_code, message or None, (outputs...), queue_us, compute_us,
//   answered_model, answered_version, fallback_reason name, primary_version)]
py::list PollableSink_Drain(PollableSink& sink) {
  std::vector<InferResult> results;
  sink.Drain(&results);
  py::list out(results.size());
  for (size_t i = 0; i < results.size(); ++i) {
    InferResult& r = results[i];
    py::tuple outs(r.outputs.size());
    for (size_t k = 0; k < r.outputs.size(); ++k) outs[k] = ToNumpy(r.outputs[k]);
    py::object msg = r.status.ok() ? py::object(py::none()) : py::object(py::str(r.status.message()));
    out[i] = py::make_tuple(r.tag, static_cast<int>(r.status.code()), msg, outs, r.queue_us, r.compute_us,
                            std::move(r.answered_model), r.answered_version, FallbackReasonName(r.fallback_reason),
                            r.primary_version);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "inferline native core";
  core_error = PyErr_NewExceptionWithDoc("inferline._core.CoreError",
                                         "A non-OK core status: .code (its gRPC number) and .message; str() is the message.",
                                         PyExc_Exception, nullptr);
  if (core_error.ptr() == nullptr) throw py::error_already_set();
  m.add_object("CoreError", core_error);  // the module keeps it alive (core_error borrows)
  py::register_exception_translator(&TranslateStatusError);

  py::class_<Backend, std::shared_ptr<Backend>>(m, "Backend");
  m.def("echo_backend", [](std::vector<std::string> outputs) -> std::shared_ptr<Backend> {
    return std::make_shared<EchoBackend>(std::move(outputs));
  }, "Native backend copying input i to output i (measures the engine's own overhead).");
  m.def("python_backend", [](py::object fn, std::vector<std::string> outputs) -> std::shared_ptr<Backend> {
    return std::make_shared<PyCallableBackend>(std::move(fn), std::move(outputs));
  }, "Backend calling fn({input: array}) once per batch.");

  inferline_py::BindDevice(m, &Throw);

  py::class_<PollableSink>(m, "Sink")
      .def(py::init<>())
      .def_property_readonly("fd", &PollableSink::fd)
      .def("drain", &PollableSink_Drain)
      .def("wait", &PollableSink::WaitReadable, py::arg("timeout_ms"), py::call_guard<py::gil_scoped_release>());

  // Loaded versions live in the Engine; a Model is one of them, found by get().
  py::class_<Model, std::shared_ptr<Model>>(m, "Model")
      .def_property_readonly("name", [](const Model& model) { return model.config().name; })
      .def_property_readonly("version", [](const Model& model) { return model.config().version; })
      .def_property_readonly("host", &Model_Host)
      .def("now_us", &Model::NowUs)
      .def("stats", &Model_Stats)
      .def("reset_stats", &Model::ResetStats)
      .def("gpu_memory", [](const Model& model) {
        const GpuMemory g = model.gpu_memory();
        py::dict d;
        d["device"] = g.device;
        d["device_bytes"] = g.device_bytes;
        d["pinned_bytes"] = g.pinned_bytes;
        return d;
      }, "The core's own buffers of a version placed on a GPU: {'device', 'device_bytes', 'pinned_bytes'}.");

  py::class_<Engine, EnginePtr>(m, "Engine")
      .def(py::init([] { return EnginePtr(new Engine()); }))
      .def("load", &Engine_Load, py::arg("config"), py::arg("backend"), py::arg("host") = py::none())
      .def("replace", &Engine_Replace, py::arg("config"), py::arg("backend"), py::arg("host") = py::none(),
           py::arg("drain") = true)
      .def("unload", &Engine_Unload, py::arg("name"), py::arg("version") = Engine::kLatest, py::arg("drain") = true)
      .def("get", &Engine_Get, py::arg("name"), py::arg("version") = Engine::kLatest)
      .def("list", &Engine_List)
      .def("submit", &Engine_Submit, py::arg("name"), py::arg("version"), py::arg("inputs"), py::arg("tag"),
           py::arg("sink"), py::arg("priority"), py::arg("timeout_us"), py::arg("keep"))
      .def("shutdown", &Engine::Shutdown, py::arg("drain") = true, py::call_guard<py::gil_scoped_release>())
      .def("now_us", &Engine::NowUs);

  // Routes by a published policy, with fallback (router.h). Keeps its Engine
  // alive; drop it (it waits for its accepted requests) before engine.shutdown().
  py::class_<PyRouter, PyRouterPtr>(m, "Router")
      .def(py::init([](Engine& e) { return PyRouterPtr(new PyRouter(&e)); }), py::arg("engine"),
           py::keep_alive<1, 2>())
      .def("publish", &Router_Publish, py::arg("model"), py::arg("policy"))
      .def("remove", &Router_Remove, py::arg("model"))
      .def("stats", &Router_Stats, py::arg("model"))
      .def("default_version", [](const PyRouter& r, const std::string& model) { return r.router.DefaultVersion(model); },
           py::arg("model"))
      .def("submit", &Router_Submit, py::arg("model"), py::arg("version"), py::arg("routing_key"), py::arg("inputs"),
           py::arg("tag"), py::arg("sink"), py::arg("priority"), py::arg("timeout_us"), py::arg("keep"),
           py::arg("cancel") = py::none());

  // Withdraws a routed request whose caller went away: answered CANCELLED, never computed,
  // if set before its batch runs (model.h InferRequest::cancelled).
  py::class_<CancelFlag>(m, "CancelFlag")
      .def(py::init<>())
      .def("cancel", [](CancelFlag& f) { f.set.store(true, std::memory_order_relaxed); })
      .def_property_readonly("cancelled", [](const CancelFlag& f) { return f.set.load(std::memory_order_relaxed); });

  // A latency histogram of a stage timed in Python (the frontends' decode and encode), on the
  // core's bucket bounds: observe_ns is one relaxed bucket increment (plus count, sum, max);
  // snapshot() has the shape of a stats() histogram, in microseconds.
  py::class_<LatencyHistogram>(m, "StageHistogram")
      .def(py::init<>())
      .def("observe_ns", [](LatencyHistogram& h, uint64_t ns) { h.Record(ns / 1000); }, py::arg("ns"))
      .def("snapshot", [](const LatencyHistogram& h) { return HistogramToPy(h.Snapshot()); });

  inferline_py::BindNativeFrontend(m, &Throw);
  inferline_py::BindNativeLoadgen(m, &Throw);
  inferline_py::BindNativeOrt(m, &Throw);

  m.attr("STATUS_NAMES") = [] {
    py::dict d;
    for (int c = 0; c <= 16; ++c) d[py::int_(c)] = StatusCodeName(static_cast<StatusCode>(c));
    return d;
  }();
}
