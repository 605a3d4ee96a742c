// _core.OrtBackend: ONNX Runtime's C API as a backend (inferline/ort_backend.h), bound for the
// Python onnxruntime backend factory (python/inferline/backends/onnxruntime.py).
#include "native_ort.h"

#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#ifdef INFERLINE_HAVE_ORT
#include "inferline/ort_backend.h"
#endif

namespace py = pybind11;

namespace inferline_py {
#ifdef INFERLINE_HAVE_ORT
namespace {

// (name, type, dims or None): dims hold ints for fixed dims, the symbolic name (a str) or None
// for the others, as onnxruntime's NodeArg.shape.
py::list ArgsToPy(const std::vector<inferline::OrtGraphArg>& args) {
  py::list out;
  for (const auto& a : args) {
    py::object shape = py::none();
    if (a.has_shape) {
      py::list dims;
      for (size_t i = 0; i < a.dims.size(); ++i) {
        if (a.dims[i] >= 0) {
          dims.append(a.dims[i]);
        } else if (!a.names[i].empty()) {
          dims.append(a.names[i]);
        } else {
          dims.append(py::none());
        }
      }
      shape = dims;
    }
    out.append(py::make_tuple(a.name, a.type, shape));
  }
  return out;
}

}  // namespace
#endif

void BindNativeOrt(py::module_& m, void (*raise)(const inferline::Status&)) {
#ifdef INFERLINE_HAVE_ORT
  using inferline::OrtBackend;
  py::class_<OrtBackend, inferline::Backend, std::shared_ptr<OrtBackend>>(m, "OrtBackend")
      .def_property_readonly("inputs", [](const OrtBackend& b) { return ArgsToPy(b.graph_inputs()); })
      .def_property_readonly("outputs", [](const OrtBackend& b) { return ArgsToPy(b.graph_outputs()); })
      .def_property_readonly("library_version", &OrtBackend::library_version);
  m.def(
      "ort_backend",
      [raise](const std::string& library, const std::string& model_path, int intra_op_threads,
              int inter_op_threads, bool parallel, int graph_optimization,
              std::vector<std::pair<std::string, std::string>> config_entries,
              std::vector<std::string> output_names) {
        inferline::OrtSessionOptionsSpec opts;
        opts.intra_op_threads = intra_op_threads;
        opts.inter_op_threads = inter_op_threads;
        opts.parallel = parallel;
        opts.graph_optimization = graph_optimization;
        opts.config_entries = std::move(config_entries);
        std::shared_ptr<OrtBackend> backend;
        inferline::Status st;
        {
          py::gil_scoped_release nogil;
          st = OrtBackend::Open(library, model_path, opts, std::move(output_names), &backend);
        }
        if (!st.ok()) raise(st);
        return backend;
      },
      py::arg("library"), py::arg("model_path"), py::kw_only(), py::arg("intra_op_threads"),
      py::arg("inter_op_threads") = 0, py::arg("parallel") = false, py::arg("graph_optimization") = 99,
      py::arg("config_entries") = std::vector<std::pair<std::string, std::string>>{},
      py::arg("output_names"));
  m.attr("ORT_API_VERSION") = inferline::OrtApiVersion();
  m.attr("NATIVE_ORT") = "";
#else
  (void)raise;
  m.attr("ORT_API_VERSION") = 0;
  m.attr("NATIVE_ORT") =
      "inferline was built without the native ONNX Runtime backend: CMake found no onnxruntime_c_api.h "
      "(Debian: libonnxruntime-dev; bash tools/install.sh fetches it)";
#endif
}

}  // namespace inferline_py
