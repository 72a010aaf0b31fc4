// A minimal test harness for the core's C++ tests: TEST(name) registers a
// function, CHECK/CHECK_EQ record failures with file and line, main() runs
// them all and exits non-zero on any failure. Enough for ctest, with no
// dependency beyond the standard library.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace check {

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& cases() {
  static std::vector<Case> all;
  return all;
}

inline int& failures() {
  static int n = 0;
  return n;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { cases().push_back({name, std::move(fn)}); }
};

// Enums print as their number.
template <typename T>
auto show(const T& v) {
  if constexpr (std::is_enum_v<T>) {
    return static_cast<int64_t>(v);
  } else {
    return v;
  }
}

template <typename A, typename B>
void expect_eq(const A& a, const B& b, const char* as, const char* bs, const char* file, int line) {
  if (!(a == b)) {
    std::ostringstream os;
    os << file << ":" << line << ": CHECK_EQ(" << as << ", " << bs << ") failed: " << show(a) << " != " << show(b);
    std::fprintf(stderr, "%s\n", os.str().c_str());
    ++failures();
  }
}

}  // namespace check

#define TEST(name)                                         \
  static void name();                                      \
  static ::check::Register name##_registered(#name, name); \
  static void name()

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      ++::check::failures();                                                        \
    }                                                                               \
  } while (0)

#define CHECK_EQ(a, b) ::check::expect_eq((a), (b), #a, #b, __FILE__, __LINE__)

int main() {
  for (const auto& c : ::check::cases()) {
    const int before = ::check::failures();
    c.fn();
    std::printf("%s %s\n", ::check::failures() == before ? "ok  " : "FAIL", c.name);
  }
  std::printf("%zu tests, %d failed checks\n", ::check::cases().size(), ::check::failures());
  return ::check::failures() == 0 ? 0 : 1;
}
