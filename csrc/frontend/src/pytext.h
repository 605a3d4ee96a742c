// Private: text as the Python frontend writes it (repr of a str, quote(), float repr, list repr,
// clip_message), so that the native frontend's error messages match python/inferline/server's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace inferline::grpcfe {

// Code points in a UTF-8 string (Python's len() of the str).
size_t Utf8Length(std::string_view utf8) noexcept;
// repr() of a Python str holding `utf8`: quotes chosen as Python does, escapes for backslash,
// the quote, \t \n \r and other control characters (\xNN).
std::string PyRepr(std::string_view utf8);
// convert.quote: repr(name), or repr of its first `limit` characters + "... (N characters)".
std::string Quote(std::string_view name, size_t limit = 200);
// repr() of a Python float: shortest round-trip digits, exponent form below 1e-4 and from 1e16.
std::string PyFloatRepr(double v);
// "[1, 2, 3]" (a Python list of ints); with elide, its middle cut past 16 items (convert._shape).
std::string PyIntList(const int64_t* values, size_t n, bool elide = false);
// grpc_frontend.clip_message: `message`, or its first 3/4 and last 1/4 of `limit` UTF-8 bytes
// around " ...[N characters in all]... ".
std::string ClipMessage(std::string_view message, size_t limit = 1024);
// The decimal product of `dims` (all >= 0) times `factor`, however large (Python ints).
std::string DecimalProduct(const int64_t* dims, size_t n, uint64_t factor);

}  // namespace inferline::grpcfe
