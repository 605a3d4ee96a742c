#include "inferline/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace inferline {

size_t DataTypeSize(DataType dt) noexcept {
  switch (dt) {
    case DataType::kBool: case DataType::kUInt8: case DataType::kInt8: return 1;
    case DataType::kUInt16: case DataType::kInt16: case DataType::kFloat16: return 2;
    case DataType::kUInt32: case DataType::kInt32: case DataType::kFloat32: return 4;
    case DataType::kUInt64: case DataType::kInt64: case DataType::kFloat64: return 8;
  }
  return 0;
}

namespace {
struct TypeName { DataType dt; const char* kserve; const char* numpy; };
constexpr TypeName kTypeNames[] = {
    {DataType::kBool, "BOOL", "bool"},       {DataType::kUInt8, "UINT8", "uint8"},
    {DataType::kUInt16, "UINT16", "uint16"}, {DataType::kUInt32, "UINT32", "uint32"},
    {DataType::kUInt64, "UINT64", "uint64"}, {DataType::kInt8, "INT8", "int8"},
    {DataType::kInt16, "INT16", "int16"},    {DataType::kInt32, "INT32", "int32"},
    {DataType::kInt64, "INT64", "int64"},    {DataType::kFloat16, "FP16", "float16"},
    {DataType::kFloat32, "FP32", "float32"}, {DataType::kFloat64, "FP64", "float64"},
};
}  // namespace

const char* DataTypeName(DataType dt) noexcept {
  for (const auto& t : kTypeNames) if (t.dt == dt) return t.numpy;
  return "invalid";
}

bool ParseDataType(const std::string& name, DataType* out) noexcept {
  for (const auto& t : kTypeNames) {
    if (name == t.kserve || name == t.numpy) { *out = t.dt; return true; }
  }
  return false;
}

Shape::Shape(std::initializer_list<int64_t> d) {
  for (int64_t v : d) {
    if (rank < kMaxRank) dims[rank++] = v;
  }
}

int64_t Shape::NumElements() const noexcept {
  int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= dims[i];
  return n;
}

int64_t Shape::RowElements() const noexcept {
  int64_t n = 1;
  for (int i = 1; i < rank; ++i) n *= dims[i];
  return n;
}

std::string Shape::ToString() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

bool Shape::operator==(const Shape& o) const noexcept {
  if (rank != o.rank) return false;
  for (int i = 0; i < rank; ++i) if (dims[i] != o.dims[i]) return false;
  return true;
}

Tensor Tensor::Allocate(DataType dtype, const Shape& shape) {
  constexpr size_t kAlign = 64;
  Tensor t;
  t.dtype = dtype;
  t.shape = shape;
  size_t bytes = t.ByteSize();
  size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded == 0 ? kAlign : rounded);
  if (p == nullptr) throw std::bad_alloc();
  t.owner = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  t.data = p;
  return t;
}

Tensor Tensor::SliceRows(int64_t begin, int64_t count) const {
  Tensor t = *this;
  t.shape.dims[0] = count;
  t.data = static_cast<char*>(data) + static_cast<size_t>(begin) * RowBytes();
  return t;
}

}  // namespace inferline
