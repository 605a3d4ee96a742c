// inferline/tensor.h — data types, shapes and tensors exchanged with the core.
//
// TensorView is non-owning (the caller keeps the memory alive for as long as the
// call that received it says). Tensor shares ownership of its bytes through
// `owner`, so a batch output can be handed back per request as slices without
// copies. All tensors are dense and row-major (C order).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

namespace inferline {

// Names follow the KServe v2 datatype strings.
enum class DataType : uint8_t {
  kBool, kUInt8, kUInt16, kUInt32, kUInt64, kInt8, kInt16, kInt32, kInt64,
  kFloat16, kFloat32, kFloat64,
};

size_t DataTypeSize(DataType dt) noexcept;
const char* DataTypeName(DataType dt) noexcept;  // "float32", "int64", ... (the config vocabulary)
// Parses a KServe name ("FP32") or a NumPy-style name ("float32"); false if unknown.
bool ParseDataType(const std::string& name, DataType* out) noexcept;

// A shape with inline storage: no allocation on the request path.
struct Shape {
  static constexpr int kMaxRank = 8;
  int32_t rank = 0;
  int64_t dims[kMaxRank] = {};

  Shape() = default;
  Shape(std::initializer_list<int64_t> d);

  int64_t operator[](int i) const noexcept { return dims[i]; }
  int64_t& operator[](int i) noexcept { return dims[i]; }
  // Product of all dims (1 for a scalar). Meaningless when a dim is negative.
  int64_t NumElements() const noexcept;
  // Product of dims [1, rank): the elements in one batch row.
  int64_t RowElements() const noexcept;
  std::string ToString() const;  // "[-1, 64]"
  bool operator==(const Shape& o) const noexcept;
  bool operator!=(const Shape& o) const noexcept { return !(*this == o); }
};

struct TensorView {
  const void* data = nullptr;
  DataType dtype = DataType::kFloat32;
  Shape shape;

  size_t ByteSize() const noexcept { return static_cast<size_t>(shape.NumElements()) * DataTypeSize(dtype); }
  size_t RowBytes() const noexcept { return static_cast<size_t>(shape.RowElements()) * DataTypeSize(dtype); }
};

struct Tensor {
  std::shared_ptr<void> owner;  // keeps `data` alive
  void* data = nullptr;
  DataType dtype = DataType::kFloat32;
  Shape shape;

  // A fresh 64-byte-aligned, uninitialised tensor.
  static Tensor Allocate(DataType dtype, const Shape& shape);
  // Rows [begin, begin + count) along dim 0, sharing ownership.
  Tensor SliceRows(int64_t begin, int64_t count) const;
  TensorView View() const noexcept { return TensorView{data, dtype, shape}; }
  size_t ByteSize() const noexcept { return View().ByteSize(); }
  size_t RowBytes() const noexcept { return View().RowBytes(); }
};

// Declared signature of one model input or output; dims of -1 are free (dim 0
// is the batch dimension and must be -1).
struct TensorSpec {
  std::string name;
  DataType dtype = DataType::kFloat32;
  Shape shape;
};

}  // namespace inferline
