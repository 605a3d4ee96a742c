// Binding-private (native_frontend.cpp, built with gRPC only): the request tap of _core.NativeFrontend,
// a bounded queue of TapRecords that Python drains when its eventfd is readable, and the
// conversion of a record to the tuple NativeFrontend.drain_tap returns (python/inferline/_core.pyi).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include "inferline/grpc_frontend.h"

namespace inferline_py {

namespace py = pybind11;
using inferline::TapRecord;
using inferline::Tensor;

// Text from the wire or the core as str; bytes that are not UTF-8 become U+FFFD.
inline py::str Utf8(const std::string& s) {
  return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace"));
}

// ---- the request tap: a bounded queue Python drains when its eventfd is readable ---
// Protocol: the eventfd is readable exactly when the queue is non-empty (both change under mu_).
class PyTap final : public inferline::RequestTap {
 public:
  static constexpr size_t kCapacity = 4096;

  PyTap() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  }
  ~PyTap() override { close(fd_); }

  void Observe(TapRecord record) noexcept override {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.size() >= kCapacity) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    try {
      queue_.push_back(std::move(record));
    } catch (...) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (queue_.size() == 1) {
      uint64_t one = 1;
      (void)!write(fd_, &one, sizeof one);
    }
  }
  std::vector<TapRecord> Take() {
    std::vector<TapRecord> out;
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t n;
    (void)!read(fd_, &n, sizeof n);
    out.swap(queue_);
    return out;
  }
  int fd() const noexcept { return fd_; }
  uint64_t dropped() const noexcept { return dropped_.load(std::memory_order_relaxed); }

 private:
  const int fd_;
  std::mutex mu_;
  std::vector<TapRecord> queue_;  // requires mu_
  std::atomic<uint64_t> dropped_{0};
};

// A NumPy array owning a copy of the tensor's bytes (a tap record's outputs may be slices of a
// whole batch: a view would keep the batch alive).
inline py::array CopyToNumpy(const Tensor& t) {
  std::vector<py::ssize_t> shape(t.shape.dims, t.shape.dims + t.shape.rank);
  py::array a(py::dtype(inferline::DataTypeName(t.dtype)), shape);
  if (t.ByteSize() != 0) std::memcpy(a.mutable_data(), t.data, t.ByteSize());
  return a;
}

inline py::dict NamedArrays(const std::vector<std::string>& names, const std::vector<Tensor>& tensors) {
  py::dict d;
  for (size_t i = 0; i < names.size() && i < tensors.size(); ++i) d[Utf8(names[i])] = CopyToNumpy(tensors[i]);
  return d;
}

inline py::tuple TapRecordToPy(const TapRecord& r) {
  const inferline::InferResult& res = r.result;
  py::object outputs = res.status.ok() ? py::object(NamedArrays(r.output_names, res.outputs)) : py::object(py::none());
  return py::make_tuple(Utf8(r.model), Utf8(r.request_id), NamedArrays(r.input_names, r.inputs), outputs,
                        static_cast<int>(res.status.code()), Utf8(res.status.message()), Utf8(res.answered_model),
                        res.answered_version,
                        inferline::FallbackReasonName(res.fallback_reason), res.primary_version, r.latency_us,
                        r.requested_version, r.reasons);
}

}  // namespace inferline_py
