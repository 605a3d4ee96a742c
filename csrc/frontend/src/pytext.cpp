// Python-compatible text for error messages (pytext.h).
#include "pytext.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <vector>

namespace inferline::grpcfe {

namespace {

bool IsContinuation(unsigned char c) noexcept { return (c & 0xC0) == 0x80; }

// Length of the UTF-8 sequence led by `c` (1 for a stray byte).
size_t SequenceLength(unsigned char c) noexcept {
  if (c < 0xC0) return 1;
  if (c < 0xE0) return 2;
  if (c < 0xF0) return 3;
  return 4;
}

// The code point at s[i] (a valid sequence assumed; protobuf checks proto3 strings).
uint32_t DecodeAt(std::string_view s, size_t i, size_t len) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  if (len == 1) return p[0];
  uint32_t cp = p[0] & (0x7F >> len);
  for (size_t k = 1; k < len && i + k < s.size(); ++k) cp = (cp << 6) | (p[k] & 0x3F);
  return cp;
}

// Python escapes these in repr(): C0/C1 controls, DEL, no-break space, soft hyphen.
bool NeedsHexEscape(uint32_t cp) noexcept {
  return cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0xA0) || cp == 0xAD;
}

}  // namespace

size_t Utf8Length(std::string_view utf8) noexcept {
  size_t n = 0;
  for (unsigned char c : utf8) n += IsContinuation(c) ? 0 : 1;
  return n;
}

std::string PyRepr(std::string_view utf8) {
  const bool has_single = utf8.find('\'') != std::string_view::npos;
  const bool has_double = utf8.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (size_t i = 0; i < utf8.size();) {
    const size_t len = SequenceLength(static_cast<unsigned char>(utf8[i]));
    const uint32_t cp = DecodeAt(utf8, i, len);
    if (cp == '\\' || cp == static_cast<uint32_t>(quote)) {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (NeedsHexEscape(cp)) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(cp & 0xFF));
      out += buf;
    } else {
      out.append(utf8.substr(i, len));
    }
    i += len;
  }
  out += quote;
  return out;
}

std::string Quote(std::string_view name, size_t limit) {
  const size_t chars = Utf8Length(name);
  if (chars <= limit) return PyRepr(name);
  size_t end = 0;
  for (size_t seen = 0; end < name.size(); ++end) {
    if (!IsContinuation(static_cast<unsigned char>(name[end])) && seen++ == limit) break;
  }
  return PyRepr(name.substr(0, end)) + "... (" + std::to_string(chars) + " characters)";
}

std::string PyFloatRepr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // "-d.ddde+XX", shortest round-trip digits
  const bool negative = sci[0] == '-';
  const size_t e = sci.find('e');
  std::string digits;
  for (size_t i = negative ? 1 : 0; i < e; ++i) {
    if (sci[i] != '.') digits += sci[i];
  }
  const int exp10 = std::stoi(sci.substr(e + 1));
  std::string out = negative ? "-" : "";
  if (exp10 < -4 || exp10 >= 16) {
    out.push_back(digits[0]);
    if (digits.size() > 1) {
      out.push_back('.');
      out.append(digits, 1, std::string::npos);
    }
    std::snprintf(buf, sizeof buf, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    return out + buf;
  }
  if (exp10 < 0) {
    out.append("0.");
    out.append(static_cast<size_t>(-exp10 - 1), '0');
    out.append(digits);
    return out;
  }
  const size_t point = static_cast<size_t>(exp10) + 1;
  if (digits.size() <= point) return out + digits + std::string(point - digits.size(), '0') + ".0";
  return out + digits.substr(0, point) + "." + digits.substr(point);
}

std::string PyIntList(const int64_t* values, size_t n, bool elide) {
  std::string out = "[";
  for (size_t i = 0; i < n; ++i) {
    if (elide && n > 16 && i == 8) {
      out += "..., ";
      i = n - 8;
    }
    out += std::to_string(values[i]);
    if (i + 1 < n) out += ", ";
  }
  return out + "]";
}

std::string ClipMessage(std::string_view message, size_t limit) {
  if (message.size() <= limit) return std::string(message);
  // head: the first 3/4 of the bytes, an incomplete last character dropped ("ignore")
  size_t head_end = limit * 3 / 4;
  size_t lead = head_end;
  while (lead > 0 && IsContinuation(static_cast<unsigned char>(message[lead - 1]))) --lead;
  if (lead > 0 && lead - 1 + SequenceLength(static_cast<unsigned char>(message[lead - 1])) > head_end) {
    head_end = lead - 1;
  }
  // tail: the last 1/4, stray continuation bytes at its start dropped
  size_t tail_begin = message.size() - limit / 4;
  while (tail_begin < message.size() && IsContinuation(static_cast<unsigned char>(message[tail_begin]))) {
    ++tail_begin;
  }
  std::string out(message.substr(0, head_end));
  out += " ...[" + std::to_string(Utf8Length(message)) + " characters in all]... ";
  out.append(message.substr(tail_begin));
  return out;
}

std::string DecimalProduct(const int64_t* dims, size_t n, uint64_t factor) {
  std::vector<uint32_t> limbs{1};  // base 1e9, least significant first
  auto multiply = [&limbs](uint64_t m) {
    unsigned __int128 carry = 0;
    for (uint32_t& limb : limbs) {
      const unsigned __int128 cur = static_cast<unsigned __int128>(limb) * m + carry;
      limb = static_cast<uint32_t>(cur % 1000000000u);
      carry = cur / 1000000000u;
    }
    while (carry != 0) {
      limbs.push_back(static_cast<uint32_t>(carry % 1000000000u));
      carry /= 1000000000u;
    }
  };
  for (size_t i = 0; i < n; ++i) multiply(static_cast<uint64_t>(dims[i]));
  multiply(factor);
  while (limbs.size() > 1 && limbs.back() == 0) limbs.pop_back();
  std::string out = std::to_string(limbs.back());
  char buf[16];
  for (size_t i = limbs.size() - 1; i-- > 0;) {
    std::snprintf(buf, sizeof buf, "%09u", limbs[i]);
    out += buf;
  }
  return out;
}

}  // namespace inferline::grpcfe
