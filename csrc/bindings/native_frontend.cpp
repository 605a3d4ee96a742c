// _core.NativeFrontend: the native gRPC frontend (csrc/frontend/) started over a _core.Router.
// Built with or without gRPC: without it, only _core.NATIVE_FRONTEND (the reason) is defined.
#include "native_frontend.h"

namespace py = pybind11;

namespace inferline_py {

void BindNativeFrontend(py::module_& m, void (*raise)(const inferline::Status&)) {
  (void)raise;
#ifdef INFERLINE_HAVE_GRPC
  m.attr("NATIVE_FRONTEND") = "";
#else
  m.attr("NATIVE_FRONTEND") =
      "inferline was built without the native gRPC frontend: CMake found no gRPC C++ package "
      "(Debian/Ubuntu: apt-get install libgrpc++-dev protobuf-compiler-grpc, then reinstall inferline)";
#endif
}

}  // namespace inferline_py
