// _core.NativeFrontend: the native gRPC frontend (csrc/frontend/) started over a _core.Router,
// with a Python callable as its control plane and an optional request tap for Python to drain.
// Built with or without gRPC: without it, only _core.NATIVE_FRONTEND (the reason) is defined.
//
// GIL rules. The frontend's control thread ("il-control") takes the GIL only to build a control
// call's arguments and call the Python callable; its lanes never take it. Everything here that
// can wait on gRPC or the core (Start, Stats, Shutdown, finishing a control call, the destructor)
// runs with the GIL released, so the control thread waiting for the GIL never waits on a thread
// that waits for it.
//
// Replies outliving the frontend: a _core.ControlReply may be called after the frontend is gone
// (Python kept it). Its completion runs under a shared lock of a ReplyGuard while the frontend
// lives; teardown takes the lock exclusively after Shutdown and marks it dead, so no completion
// reaches a destroyed frontend.
//
// The request tap (a bounded queue behind an eventfd) is in native_tap.h.
#include "native_frontend.h"

#ifdef INFERLINE_HAVE_GRPC
#include <pybind11/stl.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "inferline/grpc_frontend.h"
#include "native_tap.h"
#include "py_histogram.h"
#include "py_router.h"
#endif

namespace py = pybind11;

namespace inferline_py {

#ifdef INFERLINE_HAVE_GRPC
namespace {

using inferline::ControlCall;
using inferline::GrpcFrontend;
using inferline::GrpcFrontendOptions;
using inferline::GrpcFrontendStats;
using inferline::Status;
using inferline::StatusCode;
using inferline::TapRecord;

void (*raise_status)(const Status&) = nullptr;  // module.cpp's Throw: Status -> CoreError

// ---- control replies ------------------------------------------------------------
struct ReplyGuard {
  std::shared_mutex mu;
  bool alive = true;  // requires mu; false once the frontend is shut down and going
};

// _core.ControlReply: finishes one control call, once; later calls are ignored. Dropped
// without a reply, it answers INTERNAL (a call never hangs on a lost reply object).
class ControlReplyPy {
 public:
  ControlReplyPy(std::function<void(inferline::ControlReply)> done, std::shared_ptr<ReplyGuard> guard)
      : done_(std::move(done)), guard_(std::move(guard)) {}
  ~ControlReplyPy() {
    if (used_.exchange(true)) return;
    inferline::ControlReply r{StatusCode::kInternal, "the control plane dropped the call without answering", {}, {}};
    if (Py_IsInitialized() && PyGILState_Check()) {
      py::gil_scoped_release nogil;
      Finish(std::move(r));
    } else {
      Finish(std::move(r));
    }
  }
  // False if the call was already finished. Call without the GIL.
  bool Send(inferline::ControlReply r) {
    if (used_.exchange(true)) return false;
    Finish(std::move(r));
    return true;
  }

 private:
  void Finish(inferline::ControlReply r) {
    std::function<void(inferline::ControlReply)> done = std::move(done_);
    std::shared_lock lock(guard_->mu);
    if (guard_->alive) done(std::move(r));
  }

  std::atomic<bool> used_{false};
  std::function<void(inferline::ControlReply)> done_;  // moved out by the one Finish
  std::shared_ptr<ReplyGuard> guard_;
};

std::string ByteString(py::handle v, const char* what) {
  if (py::isinstance<py::bytes>(v) || py::isinstance<py::str>(v)) return v.cast<std::string>();
  throw py::type_error(std::string(what) + " must be str or bytes, got " +
                       std::string(py::str(py::type::handle_of(v).attr("__name__"))));
}

void ControlReply_Call(ControlReplyPy& self, int code, const std::string& message, const py::bytes& response,
                       const py::iterable& trailers) {
  if (code < 0 || code > 16) throw py::value_error("ControlReply: code " + std::to_string(code) + " is not a gRPC status code");
  inferline::ControlReply r;
  r.code = static_cast<StatusCode>(code);
  r.message = message;
  r.response = response.cast<std::string>();
  for (py::handle t : trailers) {
    auto pair = t.cast<py::sequence>();
    if (py::len(pair) != 2) throw py::value_error("ControlReply: each trailer must be a (key, value) pair");
    r.trailers.emplace_back(ByteString(pair[0], "a trailer key"), ByteString(pair[1], "a trailer value"));
  }
  py::gil_scoped_release nogil;
  self.Send(std::move(r));
}

// ---- the control handler: a Python callable -------------------------------------
py::list MetadataToPy(const std::vector<std::pair<std::string, std::string>>& metadata) {
  py::list out;
  for (const auto& [key, value] : metadata) {
    bool binary = key.size() > 4 && key.compare(key.size() - 4, 4, "-bin") == 0;  // as grpcio: bytes
    py::object v = binary ? py::object(py::bytes(value)) : py::object(Utf8(value));
    out.append(py::make_tuple(Utf8(key), v));
  }
  return out;
}

bool PythonFinalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

class PyControlHandler final : public inferline::ControlHandler {
 public:
  PyControlHandler(py::object fn, std::shared_ptr<ReplyGuard> guard) : fn_(std::move(fn)), guard_(std::move(guard)) {}
  ~PyControlHandler() override {
    py::gil_scoped_acquire gil;
    fn_ = py::object();
  }

  void Handle(ControlCall call, std::function<void(inferline::ControlReply)> done) override {
    auto reply = std::make_shared<ControlReplyPy>(std::move(done), guard_);
    if (!Py_IsInitialized() || PythonFinalizing()) {
      reply->Send({StatusCode::kUnavailable, "the server is shutting down", {}, {}});
      return;
    }
    std::string raised;  // the type name of what the callable raised
    {
      py::gil_scoped_acquire gil;
      raised = Call(call, reply);
    }
    if (!raised.empty()) {
      reply->Send({StatusCode::kInternal, "internal error (" + raised + "); see the server log", {}, {}});
    }
  }

 private:
  // Requires the GIL. "" when the callable returned, else the exception's type name (logged).
  std::string Call(const ControlCall& call, const std::shared_ptr<ControlReplyPy>& reply) {
    try {
      py::object deadline = call.deadline_left_s < 0 ? py::object(py::none()) : py::float_(call.deadline_left_s);
      fn_(call.method, py::bytes(call.request), MetadataToPy(call.metadata), deadline, py::cast(reply));
      return "";
    } catch (py::error_already_set& e) {
      std::string type = py::str(e.type().attr("__name__"));
      py::object trace = e.trace() ? py::object(e.trace()) : py::object(py::none());
      Log(call.method, py::make_tuple(e.type(), e.value(), trace));
      return type;
    } catch (const std::exception& e) {
      Log(call.method + ": " + e.what(), py::none());
      return "RuntimeError";
    }
  }
  static void Log(const std::string& what, const py::object& exc_info) {
    try {
      py::object log = py::module_::import("logging").attr("getLogger")("inferline.server.native");
      log.attr("error")("control call %s raised", what, py::arg("exc_info") = exc_info);
    } catch (py::error_already_set&) {  // logging unusable (interpreter shutting down): say nothing
    }
  }

  py::object fn_;
  std::shared_ptr<ReplyGuard> guard_;
};

// ---- options: a dict of GrpcFrontendOptions fields -------------------------------
template <class T>
T OptionAs(const std::string& key, py::handle v) {
  if constexpr (std::is_same_v<T, std::string>) {
    if (!py::isinstance<py::str>(v)) throw py::value_error("NativeFrontend option '" + key + "' must be a str");
  }
  try {
    return v.cast<T>();
  } catch (const py::cast_error&) {
    throw py::value_error("NativeFrontend option '" + key + "': cannot use " + std::string(py::repr(v)));
  }
}

using OptionSetter = void (*)(GrpcFrontendOptions&, const std::string&, py::handle);
// clang-format off
const std::pair<const char*, OptionSetter> kOptionSetters[] = {
  {"address", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.address = OptionAs<std::string>(k, v); }},
  {"threads", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.threads = OptionAs<int>(k, v); }},
  {"max_message_bytes", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.max_message_bytes = OptionAs<uint64_t>(k, v); }},
  {"max_concurrent_streams", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.max_concurrent_streams = OptionAs<uint32_t>(k, v); }},
  {"reuse_port", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.reuse_port = OptionAs<bool>(k, v); }},
  {"tls_cert_pem", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.tls_cert_pem = OptionAs<std::string>(k, v); }},
  {"tls_key_pem", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.tls_key_pem = OptionAs<std::string>(k, v); }},
  {"max_streams", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.max_streams = OptionAs<uint32_t>(k, v); }},
  {"stream_idle_timeout_s", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.stream_idle_timeout_s = OptionAs<double>(k, v); }},
  {"admission_limit", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.admission.static_limit = OptionAs<uint32_t>(k, v); }},
  {"admission_initial", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.admission.initial_limit = OptionAs<uint32_t>(k, v); }},
  {"admission_min", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.admission.min_limit = OptionAs<uint32_t>(k, v); }},
  {"admission_max", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.admission.max_limit = OptionAs<uint32_t>(k, v); }},
  {"admission_target_ms", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.admission.target_ms = OptionAs<double>(k, v); }},
  {"admission_lobby", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.admission.lobby = OptionAs<int64_t>(k, v); }},
  {"admission_lobby_bytes", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.admission.lobby_bytes = OptionAs<uint64_t>(k, v); }},
  {"admission_lobby_wait_ms", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.admission.lobby_wait_ms = OptionAs<double>(k, v); }},
  {"overload_batch_sched", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.admission.overload_batch_sched = OptionAs<bool>(k, v); }},
  {"overload_coalesce", [](GrpcFrontendOptions& o, const std::string& k, py::handle v) { o.admission.overload_coalesce = OptionAs<bool>(k, v); }},
};
// clang-format on

// Unknown keys raise ValueError naming them; a None value keeps the default.
GrpcFrontendOptions OptionsFromPy(const py::dict& d) {
  GrpcFrontendOptions o;
  for (auto item : d) {
    const std::string key = py::str(item.first);
    OptionSetter set = nullptr;
    for (const auto& [name, setter] : kOptionSetters) {
      if (key == name) set = setter;
    }
    if (set == nullptr) {
      std::string known;
      for (const auto& [name, setter] : kOptionSetters) known += (known.empty() ? "" : ", ") + std::string(name);
      throw py::value_error("NativeFrontend: unknown option '" + key + "' (options: " + known + ")");
    }
    if (!item.second.is_none()) set(o, key, item.second);
  }
  return o;
}

py::dict StatsToPy(const GrpcFrontendStats& s) {
  const GrpcFrontendStats::Admission& a = s.admission;
  py::dict admission;
  admission["limit"] = a.limit;
  admission["adaptive"] = a.adaptive;
  admission["in_flight"] = a.in_flight;
  admission["latency_ms"] = a.latency_ms;
  admission["admitted"] = a.admitted;
  // Refusals by reason; the lobby's: expired (DEADLINE_EXCEEDED), shed and timed out (UNAVAILABLE).
  admission["refused"] = py::dict(py::arg("overload") = a.refused_overload, py::arg("deadline") = a.refused_deadline,
                                  py::arg("lobby_expired") = a.lobby_expired, py::arg("lobby_shed") = a.lobby_shed,
                                  py::arg("lobby_timed_out") = a.lobby_timed_out);
  admission["lobby"] = py::dict(py::arg("size") = a.lobby, py::arg("parked") = a.parked,
                                py::arg("held") = a.held, py::arg("admitted") = a.lobby_admitted, py::arg("cancelled") = a.lobby_cancelled);
  py::dict errors;
  for (const auto& [key, count] : s.errors) {
    const auto& [protocol, code, model] = key;
    errors[py::make_tuple(protocol, code, Utf8(model))] = count;
  }
  py::dict stages;
  for (const auto& [key, hist] : s.stages) {
    stages[py::make_tuple(Utf8(key.first), key.second)] = py::make_tuple(HistogramToPy(hist.first), HistogramToPy(hist.second));
  }
  py::dict d;
  d["admission"] = admission;
  d["errors"] = errors;
  d["stages"] = stages;
  d["open_streams"] = s.open_streams;
  return d;
}

// ---- the frontend as Python holds it --------------------------------------------
class NativeFrontend {
 public:
  // Requires the GIL (released around Start).
  NativeFrontend(PyRouter& r, const py::dict& options, py::object control, bool tap) {
    GrpcFrontendOptions opt = OptionsFromPy(options);
    if (!control.is_none()) {
      if (!PyCallable_Check(control.ptr())) throw py::type_error("NativeFrontend: control must be callable or None");
      control_ = std::make_unique<PyControlHandler>(std::move(control), guard_);
    }
    if (tap) tap_ = std::make_unique<PyTap>();
    inferline::Expected<std::unique_ptr<GrpcFrontend>> fe = [&] {
      py::gil_scoped_release nogil;
      return GrpcFrontend::Start(&r.router, r.engine, opt, control_.get(), tap_.get());
    }();
    if (!fe.ok()) raise_status(fe.status());
    fe_ = std::move(fe).value();
  }
  // Without the GIL (NativeFrontendDeleter).
  ~NativeFrontend() {
    fe_->Shutdown(0);
    {
      std::unique_lock lock(guard_->mu);  // waits for completions in progress
      guard_->alive = false;
    }
    fe_.reset();
    control_.reset();  // takes the GIL to drop the callable
    tap_.reset();
  }

  GrpcFrontend& fe() { return *fe_; }
  PyTap* tap() { return tap_.get(); }

 private:
  std::shared_ptr<ReplyGuard> guard_ = std::make_shared<ReplyGuard>();
  std::unique_ptr<PyControlHandler> control_;
  std::unique_ptr<PyTap> tap_;
  std::unique_ptr<GrpcFrontend> fe_;
};

struct NativeFrontendDeleter {
  void operator()(NativeFrontend* f) const {
    py::gil_scoped_release nogil;
    delete f;
  }
};
using NativeFrontendPtr = std::unique_ptr<NativeFrontend, NativeFrontendDeleter>;

py::list NativeFrontend_DrainTap(NativeFrontend& f) {
  py::list out;
  if (f.tap() == nullptr) return out;
  std::vector<TapRecord> records = f.tap()->Take();
  for (const TapRecord& r : records) out.append(TapRecordToPy(r));
  return out;
}

void NativeFrontend_SetTapShare(NativeFrontend& f, const std::string& model, double share) {
  if (!(share >= 0.0 && share <= 1.0)) throw py::value_error("NativeFrontend.set_tap_share: share must be in [0, 1]");
  py::gil_scoped_release nogil;
  f.fe().SetTapShare(model, share);
}

// set_arm_watch(model, None) ends the watch; else arms {version: share}.
void NativeFrontend_SetArmWatch(NativeFrontend& f, const std::string& model, py::object arms,
                                std::vector<double> latency_bounds_ms, double max_copies_per_s, bool tap_with_id) {
  std::optional<inferline::ArmWatch> watch;
  if (!arms.is_none()) {
    watch.emplace();
    for (auto item : py::cast<py::dict>(arms)) {
      watch->arms[py::cast<int64_t>(item.first)] = py::cast<double>(item.second);
    }
    watch->latency_bounds_ms = std::move(latency_bounds_ms);
    watch->max_copies_per_s = max_copies_per_s;
    watch->tap_with_id = tap_with_id;
  }
  inferline::Status st;
  {
    py::gil_scoped_release nogil;
    st = f.fe().SetArmWatch(model, std::move(watch));
  }
  if (!st.ok()) raise_status(st);
}

py::list NativeFrontend_TakeArmCounts(NativeFrontend& f) {
  std::vector<inferline::ArmCounts> counts;
  {
    py::gil_scoped_release nogil;
    counts = f.fe().TakeArmCounts();
  }
  py::list out;
  for (const auto& c : counts) {
    py::list latency;
    for (uint64_t n : c.latency) latency.append(n);
    out.append(py::make_tuple(Utf8(c.model), c.version, c.requests, c.errors, c.fallbacks, latency));
  }
  return out;
}

py::dict NativeFrontend_Stats(NativeFrontend& f) {
  GrpcFrontendStats s;
  {
    py::gil_scoped_release nogil;
    s = f.fe().Stats();
  }
  return StatsToPy(s);
}

void NativeFrontend_Shutdown(NativeFrontend& f, double grace_s) {
  if (!(grace_s >= 0.0)) throw py::value_error("NativeFrontend.shutdown: grace_s must be >= 0");
  py::gil_scoped_release nogil;
  f.fe().Shutdown(grace_s);
}

void Bind(py::module_& m) {
  py::class_<ControlReplyPy, std::shared_ptr<ControlReplyPy>>(m, "ControlReply")
      .def("__call__", &ControlReply_Call, py::arg("code"), py::arg("message") = "", py::arg("response") = py::bytes(),
           py::arg("trailers") = py::list());

  py::class_<NativeFrontend, NativeFrontendPtr>(m, "NativeFrontend")
      .def(py::init([](PyRouter& r, const py::dict& options, py::object control, bool tap) {
             return NativeFrontendPtr(new NativeFrontend(r, options, std::move(control), tap));
           }),
           py::arg("router"), py::arg("options"), py::arg("control") = py::none(), py::arg("tap") = false,
           py::keep_alive<1, 2>())
      .def_property_readonly("port", [](NativeFrontend& f) { return f.fe().port(); })
      .def("set_serving", [](NativeFrontend& f, bool serving) { f.fe().SetServing(serving); }, py::arg("serving"))
      .def("set_tap_share", &NativeFrontend_SetTapShare, py::arg("model"), py::arg("share"))
      .def("set_arm_watch", &NativeFrontend_SetArmWatch, py::arg("model"), py::arg("arms"),
           py::arg("latency_bounds_ms") = std::vector<double>{}, py::arg("max_copies_per_s") = 0.0,
           py::arg("tap_with_id") = false)
      .def("take_arm_counts", &NativeFrontend_TakeArmCounts)
      .def("stats", &NativeFrontend_Stats)
      .def("shutdown", &NativeFrontend_Shutdown, py::arg("grace_s"))
      .def("tap_fd", [](NativeFrontend& f) { return f.tap() ? f.tap()->fd() : -1; })
      .def("drain_tap", &NativeFrontend_DrainTap)
      .def_property_readonly("tap_dropped", [](NativeFrontend& f) -> uint64_t { return f.tap() ? f.tap()->dropped() : 0; });
}

}  // namespace
#endif  // INFERLINE_HAVE_GRPC

void BindNativeFrontend(py::module_& m, void (*raise)(const inferline::Status&)) {
#ifdef INFERLINE_HAVE_GRPC
  raise_status = raise;
  Bind(m);
  m.attr("NATIVE_FRONTEND") = "";
  m.attr("TAP_SAMPLED") = inferline::kTapSampled;
  m.attr("TAP_COPY") = inferline::kTapCopy;
  m.attr("TAP_LABEL") = inferline::kTapLabel;
#else
  (void)raise;
  m.attr("NATIVE_FRONTEND") =
      "inferline was built without the native gRPC frontend: CMake found no gRPC C++ package "
      "(Debian/Ubuntu: apt-get install libgrpc++-dev protobuf-compiler-grpc, then reinstall inferline)";
#endif
}

}  // namespace inferline_py
