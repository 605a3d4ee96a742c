// Private to inferline_grpc_load: answers classified from their bytes, without decoding them.
//
//   FlatBytes flat(response);                 // one contiguous view (copied only if in pieces)
//   bool fallback = HasFallback(flat.view());
//   StreamAnswer a = ReadStreamAnswer(flat.view());   // error_message and infer_response.id
//
// The stream reader walks the top-level fields of a ModelStreamInferResponse (1: error_message,
// 2: infer_response) and, inside infer_response, stops at field 3 (id), which an encoder writes
// after model_name and model_version: a few dozen bytes read per answer. Malformed bytes give an
// answer with no id and no error (then matched to the oldest outstanding request).
#pragma once

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace inferline::loadgen {

constexpr std::string_view kFallbackKey = "fallback_reason";

class FlatBytes {
 public:
  explicit FlatBytes(const grpc::ByteBuffer& buffer) {
    if (!buffer.Valid()) return;
    if (!buffer.TrySingleSlice(&slice_).ok()) (void)buffer.DumpToSingleSlice(&slice_);
  }
  std::string_view view() const {
    return {reinterpret_cast<const char*>(slice_.begin()), slice_.size()};
  }

 private:
  grpc::Slice slice_;
};

inline bool HasFallback(std::string_view bytes) {
  return memmem(bytes.data(), bytes.size(), kFallbackKey.data(), kFallbackKey.size()) != nullptr;
}

struct StreamAnswer {
  std::string_view error;             // empty: no error_message
  bool has_id = false;
  uint64_t id = 0;                    // infer_response.id as a decimal number
};

// Takes the entry of a stream's table (entries[slot], ids = seq * capacity + slot, as IdSuffix
// writes them) that answer `a` is for: the live one its id names, else the oldest live one (an
// answer without a usable id). It is marked free (its slot back on `free_slots`) and its
// scheduled time returned; false when none is live. Entry: `live`, `seq`, `scheduled_ns`.
template <typename Entry>
bool TakeAnswered(std::vector<Entry>& entries, std::vector<uint32_t>& free_slots, uint32_t capacity,
                  const StreamAnswer& a, int64_t& scheduled_ns) {
  Entry* e = nullptr;
  if (a.has_id) {
    Entry& candidate = entries[a.id % capacity];
    if (candidate.live && candidate.seq == a.id / capacity) e = &candidate;
  }
  for (uint32_t i = 0; e == nullptr && i < capacity; ++i) {  // no id: the oldest outstanding
    Entry* other = &entries[i];
    if (other->live && (e == nullptr || other->seq < e->seq)) e = other;
  }
  if (e == nullptr) return false;
  e->live = false;
  free_slots.push_back(static_cast<uint32_t>(e - entries.data()));
  scheduled_ns = e->scheduled_ns;
  return true;
}

namespace wire {

inline bool Varint(std::string_view& s, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && !s.empty(); shift += 7) {
    const auto b = static_cast<uint8_t>(s.front());
    s.remove_prefix(1);
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

// The next field: its number and, for a length-delimited one, its bytes. False at the end or on
// malformed bytes; fields of other wire types are skipped (value left empty).
inline bool Field(std::string_view& s, uint32_t& number, std::string_view& value) {
  uint64_t tag, n;
  if (s.empty() || !Varint(s, tag)) return false;
  number = static_cast<uint32_t>(tag >> 3);
  value = {};
  switch (tag & 7) {
    case 0: return Varint(s, n);
    case 1: if (s.size() < 8) return false; s.remove_prefix(8); return true;
    case 5: if (s.size() < 4) return false; s.remove_prefix(4); return true;
    case 2:
      if (!Varint(s, n) || n > s.size()) return false;
      value = s.substr(0, n);
      s.remove_prefix(n);
      return true;
    default: return false;
  }
}

inline bool Decimal(std::string_view s, uint64_t& v) {
  if (s.empty() || s.size() > 19) return false;
  v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return true;
}

}  // namespace wire

inline StreamAnswer ReadStreamAnswer(std::string_view bytes) {
  StreamAnswer a;
  uint32_t number;
  std::string_view value;
  while (wire::Field(bytes, number, value)) {
    if (number == 1) {
      a.error = value;
    } else if (number == 2) {
      std::string_view inner = value, field;
      while (wire::Field(inner, number, field)) {
        if (number == 3) {
          a.has_id = wire::Decimal(field, a.id);
          break;
        }
      }
    }
  }
  return a;
}

// " id" as field 3 of a ModelInferRequest, appended to a request's bytes (ids < 2^64: 19 digits).
struct IdSuffix {
  char bytes[24];
  size_t size = 0;
  explicit IdSuffix(uint64_t id) {
    char digits[20];
    size_t n = 0;
    do {
      digits[n++] = static_cast<char>('0' + id % 10);
      id /= 10;
    } while (id != 0);
    bytes[0] = 0x1a;
    bytes[1] = static_cast<char>(n);
    for (size_t i = 0; i < n; ++i) bytes[2 + i] = digits[n - 1 - i];
    size = 2 + n;
  }
};

}  // namespace inferline::loadgen
