// Error messages for the ops' argument checks, built without iostreams.
//
// TORCH_CHECK formats its arguments through a std::ostringstream created in the calling library;
// numbers go through the stream's std::num_put facet. When the extension is linked against a second
// copy of libstdc++ (a compiler from another prefix that links parts of its runtime statically,
// or an explicit -static-libstdc++), that facet is looked up with one copy's locale ids in a locale
// built by the other copy: the number comes out empty or the process dies (SIGSEGV) instead of
// raising. LPC_CHECK builds the whole message as one std::string with std::to_chars (no locale, no
// stream) and hands TORCH_CHECK that single string, which c10::str passes through untouched.
// Devices and dtypes are named by libc10's own functions.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <charconv>
#include <cstdint>
#include <string>
#include <type_traits>

namespace lpc_fast {
namespace detail {

inline void append(std::string& out, const char* s) { out += s; }
inline void append(std::string& out, const std::string& s) { out += s; }
inline void append(std::string& out, c10::ScalarType t) { out += c10::toString(t); }
inline void append(std::string& out, const c10::Device& d) { out += d.str(); }

template <typename T,
          typename = std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool>>>
void append(std::string& out, T x) {
  char buf[64];
  // Shortest round-trip form for floating point, plain decimal for integers.
  const auto res = std::to_chars(buf, buf + sizeof(buf), x);
  out.append(buf, res.ptr);
}

inline void append(std::string& out, bool b) { out += b ? "true" : "false"; }

inline void append(std::string& out, c10::IntArrayRef sizes) {
  out += '[';
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) out += ", ";
    append(out, sizes[i]);
  }
  out += ']';
}

}  // namespace detail

// The concatenation of the arguments (strings, numbers, sizes, dtypes, devices) as one string.
template <typename... Args>
std::string check_message(const Args&... args) {
  std::string out;
  (detail::append(out, args), ...);
  return out;
}

}  // namespace lpc_fast

// TORCH_CHECK with a message built by lpc_fast::check_message (evaluated only when cond fails).
#define LPC_CHECK(cond, ...) TORCH_CHECK((cond), ::lpc_fast::check_message(__VA_ARGS__))
