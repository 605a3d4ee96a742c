#include "demo_file.h"

#include <bit>
#include <cstring>
#include <fstream>
#include <iterator>

static_assert(std::endian::native == std::endian::little, "the demo file is little-endian");

namespace {

using inferline::Expected;
using inferline::InvalidArgument;
using inferline::Status;

// Bounds-checked reads from the file's bytes; the first failure sticks.
class Reader {
 public:
  explicit Reader(std::vector<char> bytes) : bytes_(std::move(bytes)) {}

  template <class T>
  T Get() {
    T v{};
    Copy(&v, sizeof(T));
    return v;
  }
  template <class T>
  std::vector<T> Array(uint64_t n) {
    if (n > bytes_.size() / sizeof(T)) {  // also guards the allocation
      ok_ = false;
      return {};
    }
    std::vector<T> v(n);
    Copy(v.data(), n * sizeof(T));
    return v;
  }
  std::string Text() {
    auto chars = Array<char>(Get<uint32_t>());
    return std::string(chars.begin(), chars.end());
  }
  bool ok() const { return ok_; }
  bool at_end() const { return pos_ == bytes_.size(); }

 private:
  void Copy(void* out, size_t n) {
    if (!ok_ || n > bytes_.size() - pos_) {
      ok_ = false;
      return;
    }
    std::memcpy(out, bytes_.data() + pos_, n);
    pos_ += n;
  }
  std::vector<char> bytes_;
  size_t pos_ = 0;
  bool ok_ = true;
};

void ReadHeader(Reader& in, DemoData& d) {
  d.model_name = in.Text();
  d.version = in.Get<int64_t>();
  d.features = in.Get<uint32_t>();
  d.hidden = in.Get<uint32_t>();
  d.classes = in.Get<uint32_t>();
  d.rows = in.Get<uint32_t>();
  d.max_batch_size = in.Get<uint32_t>();
  d.max_queue_delay_us = in.Get<uint64_t>();
  d.preprocessing.mean = in.Array<float>(in.Get<uint32_t>());
  d.preprocessing.std = in.Array<float>(in.Get<uint32_t>());
  d.preprocessing.nan_fill = in.Get<float>();
  d.preprocessing.clip_lo = in.Get<float>();
  d.preprocessing.clip_hi = in.Get<float>();
  d.source = in.Text();
}

}  // namespace

Expected<DemoData> ReadDemoFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return Status(inferline::StatusCode::kNotFound, path + ": cannot open (run export_demo.py first)");
  Reader in(std::vector<char>(std::istreambuf_iterator<char>(file), {}));
  auto magic = in.Array<char>(8);
  if (!in.ok() || std::memcmp(magic.data(), "ILDIGIT1", 8) != 0) return InvalidArgument(path + ": not an ILDIGIT1 file");
  DemoData d;
  ReadHeader(in, d);
  const uint64_t f = d.features, h = d.hidden, c = d.classes, n = d.rows;
  d.w1 = in.Array<float>(f * h);
  d.w2 = in.Array<float>(h * c);
  d.inputs = in.Array<float>(n * f);
  d.logits = in.Array<float>(n * c);
  d.labels = in.Array<int64_t>(n);
  if (!in.ok() || !in.at_end()) return InvalidArgument(path + ": truncated or malformed ILDIGIT1 file");
  if (f == 0 || h == 0 || c == 0 || n == 0) return InvalidArgument(path + ": empty model or test set");
  return d;
}

inferline::ModelConfig DemoConfig(const DemoData& d, uint32_t instances) {
  using inferline::DataType;
  using inferline::Shape;
  using inferline::TensorSpec;
  inferline::ModelConfig c;
  c.name = d.model_name;
  c.version = d.version;
  c.inputs = {TensorSpec{"pixels", DataType::kFloat32, Shape{-1, d.features}}};
  c.outputs = {TensorSpec{"logits", DataType::kFloat32, Shape{-1, d.classes}},
               TensorSpec{"label", DataType::kInt64, Shape{-1, 1}}};
  inferline::PreprocessSpec prep;
  prep.kind = inferline::PreprocessSpec::Kind::kTabular;
  prep.tabular = d.preprocessing;
  c.preprocessing = {prep};
  c.batching.max_batch_size = d.max_batch_size;
  c.batching.max_queue_delay_us = d.max_queue_delay_us;
  c.instances = instances;
  return c;
}
