// _core.GrpcLoad: inferline::GrpcLoad (csrc/loadgen/) for `inferline bench --transport native`.
// Built with or without gRPC: without it, only _core.NATIVE_LOADGEN (the reason) is defined.
// wait_ready and run release the GIL (run blocks for the whole load); progress reads atomics.
// run's result is a dict in the shape of python/inferline/loadgen/worker.py's Recorder.result()
// (histograms as Histogram.to_dict), plus cpu_s and achieved_rps.
#include "native_loadgen.h"

#ifdef INFERLINE_HAVE_GRPC_LOAD
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "inferline/grpc_load.h"
#endif

namespace py = pybind11;

namespace inferline_py {

#ifdef INFERLINE_HAVE_GRPC_LOAD
namespace {

using inferline::GrpcLoad;
using inferline::GrpcLoadOptions;
using inferline::LoadHistogram;

void (*raise_status)(const inferline::Status&) = nullptr;

py::dict HistogramDict(const LoadHistogram& h, double precision) {
  py::list counts;
  for (const auto& [index, n] : h.counts) counts.append(py::make_tuple(index, n));
  py::dict d;
  d["precision"] = precision;
  d["counts"] = counts;
  d["count"] = h.count;
  d["total"] = h.total_us;
  d["min"] = h.count ? py::object(py::float_(h.min_us)) : py::object(py::none());
  d["max"] = h.max_us;
  return d;
}

std::unique_ptr<GrpcLoad> GrpcLoad_Init(std::string target, std::string method, std::vector<py::bytes> payloads,
                                        bool stream, int channels, int streams, int concurrency, double rate,
                                        bool poisson, double phase_s, double warmup_s, double duration_s,
                                        double timeout_s, int max_outstanding, double interval_s, double precision,
                                        uint64_t seed, bool direct) {
  GrpcLoadOptions o;
  o.target = std::move(target);
  o.method = std::move(method);
  for (const py::bytes& p : payloads) o.payloads.emplace_back(p);
  o.stream = stream;
  o.channels = channels;
  o.streams = streams;
  o.concurrency = concurrency;
  o.rate_rps = rate;
  o.poisson = poisson;
  o.phase_s = phase_s;
  o.warmup_s = warmup_s;
  o.duration_s = duration_s;
  o.timeout_s = timeout_s;
  o.max_outstanding = max_outstanding;
  o.interval_s = interval_s;
  o.precision = precision;
  o.seed = seed;
  o.direct = direct;
  auto load = GrpcLoad::Create(std::move(o));
  if (!load.ok()) raise_status(load.status());
  return std::move(load).value();
}

py::dict GrpcLoad_Run(GrpcLoad& load, double start_at, double precision) {
  std::optional<inferline::Expected<inferline::GrpcLoadResult>> r;
  {
    py::gil_scoped_release nogil;
    r.emplace(load.Run(start_at));
  }
  if (!r->ok()) raise_status(r->status());
  const inferline::GrpcLoadResult& res = r->value();
  py::dict series, errors, out;
  for (const auto& [slot, h] : res.series) series[py::int_(slot)] = HistogramDict(h, precision);
  for (const auto& [status, n] : res.errors) errors[py::str(status)] = n;
  out["latency"] = HistogramDict(res.latency, precision);
  out["lag"] = HistogramDict(res.lag, precision);
  out["series"] = series;
  out["errors"] = errors;
  out["ok"] = res.ok;
  out["fallback"] = res.fallback;
  out["sent_total"] = res.sent_total;
  out["answered_total"] = res.answered_total;
  out["achieved_rps"] = res.achieved_rps;
  out["cpu_s"] = res.cpu_s;
  out["client"] = res.client;
  return out;
}

}  // namespace
#endif  // INFERLINE_HAVE_GRPC_LOAD

void BindNativeLoadgen(py::module_& m, void (*raise)(const inferline::Status&)) {
#ifdef INFERLINE_HAVE_GRPC_LOAD
  raise_status = raise;
  py::class_<GrpcLoad>(m, "GrpcLoad")
      .def(py::init(&GrpcLoad_Init), py::arg("target"), py::arg("method"), py::arg("payloads"),
           py::kw_only(), py::arg("stream") = false, py::arg("channels") = 1, py::arg("streams") = 0,
           py::arg("concurrency") = 1, py::arg("rate") = 0.0, py::arg("poisson") = false,
           py::arg("phase_s") = 0.0, py::arg("warmup_s") = 1.0, py::arg("duration_s") = 10.0,
           py::arg("timeout_s") = 30.0, py::arg("max_outstanding") = 10000, py::arg("interval_s") = 1.0,
           py::arg("precision") = 0.01, py::arg("seed") = 0, py::arg("direct") = true)
      .def("wait_ready", [](GrpcLoad& load, double timeout_s) {
        inferline::Status s;
        {
          py::gil_scoped_release nogil;
          s = load.WaitReady(timeout_s);
        }
        if (!s.ok()) raise_status(s);
      }, py::arg("timeout_s"))
      .def("run", &GrpcLoad_Run, py::arg("start_at"), py::arg("precision") = 0.01)
      .def("progress", [](const GrpcLoad& load) {
        const inferline::GrpcLoadProgress p = load.Progress();
        return py::make_tuple(p.answered_total, p.errors);
      });
  m.attr("NATIVE_LOADGEN") = "";
#else
  (void)raise;
  m.attr("NATIVE_LOADGEN") =
      "inferline was built without the native gRPC load generator: CMake found no gRPC C++ package "
      "(Debian/Ubuntu: apt-get install libgrpc++-dev, then reinstall inferline)";
#endif
}

}  // namespace inferline_py
