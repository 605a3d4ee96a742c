// A Python callable as a DeviceBackend, and the device buffers it is handed.
//
// fn(inputs: [DeviceArray], outputs: [DeviceArray], stream: int) is called once per batch with
// the GIL held. Each DeviceArray exposes __cuda_array_interface__ (version 3, no "stream" key:
// the callable orders its work on `stream` itself), so torch.as_tensor / cupy.asarray view it
// without a copy. fn writes rows [0, rows) of every output, in work ordered on `stream`.
#include "device_backend.h"

#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "inferline/backend.h"
#include "inferline/gpu.h"

namespace inferline_py {

namespace py = pybind11;
using inferline::DataType;
using inferline::DeviceTensor;
using inferline::Status;

namespace {

// One device buffer as Python sees it: plain values, valid for the call it was passed to (the
// memory belongs to the model; its address stays the same for the model's lifetime).
struct DeviceArray {
  uintptr_t ptr = 0;
  std::vector<int64_t> shape;
  DataType dtype = DataType::kFloat32;
  int device = 0;
  int64_t capacity_rows = 0;
};

// __cuda_array_interface__ typestr (NumPy's array-interface type codes, little-endian).
const char* TypeStr(DataType dt) {
  switch (dt) {
    case DataType::kBool: return "|b1";
    case DataType::kUInt8: return "|u1";
    case DataType::kUInt16: return "<u2";
    case DataType::kUInt32: return "<u4";
    case DataType::kUInt64: return "<u8";
    case DataType::kInt8: return "|i1";
    case DataType::kInt16: return "<i2";
    case DataType::kInt32: return "<i4";
    case DataType::kInt64: return "<i8";
    case DataType::kFloat16: return "<f2";
    case DataType::kFloat32: return "<f4";
    case DataType::kFloat64: return "<f8";
  }
  return "|V1";
}

DeviceArray ToArray(const DeviceTensor& t, int device) {
  DeviceArray a;
  a.ptr = reinterpret_cast<uintptr_t>(t.data);
  a.shape.assign(t.shape.dims, t.shape.dims + t.shape.rank);
  a.dtype = t.dtype;
  a.device = device;
  a.capacity_rows = t.capacity_rows;
  return a;
}

py::dict CudaArrayInterface(const DeviceArray& a) {
  py::dict d;
  d["shape"] = py::tuple(py::cast(a.shape));
  d["typestr"] = TypeStr(a.dtype);
  d["data"] = py::make_tuple(a.ptr, false);
  d["strides"] = py::none();
  d["version"] = 3;
  return d;
}

class PyDeviceBackend final : public inferline::DeviceBackend {
 public:
  PyDeviceBackend(py::object fn, std::vector<std::string> output_names, int device)
      : DeviceBackend(device), fn_(std::move(fn)), output_names_(std::move(output_names)) {}
  ~PyDeviceBackend() override {
    py::gil_scoped_acquire gil;
    fn_ = py::object();
  }

  Status RunOnDevice(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs,
                     void* stream) override {
    if (outputs.size() != output_names_.size()) {
      return inferline::Internal("device backend made for " + std::to_string(output_names_.size()) +
                                 " outputs was given " + std::to_string(outputs.size()));
    }
    py::gil_scoped_acquire gil;
    try {
      py::list ins, outs;
      for (const auto& t : inputs) ins.append(py::cast(ToArray(t, device())));
      for (const auto& t : outputs) outs.append(py::cast(ToArray(t, device())));
      fn_(ins, outs, reinterpret_cast<uintptr_t>(stream));
      return Status::Ok();
    } catch (py::error_already_set& e) {
      return inferline::Internal(e.what());
    } catch (const std::exception& e) {
      return inferline::Internal(e.what());
    }
  }

 private:
  py::object fn_;
  std::vector<std::string> output_names_;
};

}  // namespace

void BindDevice(py::module_& m, void (*raise)(const Status&)) {
  py::class_<DeviceArray>(m, "DeviceArray")
      .def_property_readonly("ptr", [](const DeviceArray& a) { return a.ptr; })
      .def_property_readonly("shape", [](const DeviceArray& a) { return py::tuple(py::cast(a.shape)); })
      .def_property_readonly("dtype", [](const DeviceArray& a) { return std::string(DataTypeName(a.dtype)); })
      .def_property_readonly("device", [](const DeviceArray& a) { return a.device; })
      .def_property_readonly("capacity_rows", [](const DeviceArray& a) { return a.capacity_rows; })
      .def_property_readonly("__cuda_array_interface__", &CudaArrayInterface)
      .def("with_rows", [](const DeviceArray& a, int64_t rows) {
        if (rows < 0 || rows > a.capacity_rows) {
          throw py::value_error("with_rows(" + std::to_string(rows) + "): the buffer holds " +
                                std::to_string(a.capacity_rows) + " rows");
        }
        DeviceArray b = a;
        b.shape[0] = rows;
        return b;
      }, py::arg("rows"), "The same buffer seen with `rows` rows (at most capacity_rows).")
      .def("__repr__", [](const DeviceArray& a) {
        std::string dims;
        for (int64_t d : a.shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
        return "DeviceArray(cuda:" + std::to_string(a.device) + ", " + DataTypeName(a.dtype) + " [" + dims +
               "], capacity_rows=" + std::to_string(a.capacity_rows) + ")";
      });

  m.def("device_backend", [](py::object fn, std::vector<std::string> outputs, int device)
            -> std::shared_ptr<inferline::Backend> {
    return std::make_shared<PyDeviceBackend>(std::move(fn), std::move(outputs), device);
  }, py::arg("fn"), py::arg("output_names"), py::arg("device"),
  "Backend for a model placed on CUDA device `device`: fn(inputs, outputs, stream) per batch.");

  m.def("cuda_status", [] {
    const inferline::GpuAvailability a = inferline::QueryGpus();
    py::dict d;
    d["built"] = a.built;
    d["devices"] = a.devices;
    d["reason"] = a.reason;
    return d;
  }, "{'built': compiled with CUDA, 'devices': visible CUDA devices, 'reason': what is missing}");

  m.def("cuda_mem_info", [raise](int device) {
    uint64_t free_bytes = 0, total_bytes = 0;
    Status st;
    {
      py::gil_scoped_release nogil;
      st = inferline::GpuMemoryInfo(device, &free_bytes, &total_bytes);
    }
    if (!st.ok()) raise(st);
    return py::make_tuple(free_bytes, total_bytes);
  }, py::arg("device"), "(free bytes, total bytes) of CUDA device `device` (cudaMemGetInfo).");
}

}  // namespace inferline_py
