// Result<T, E>: a small expected-like type for fallible calls on paths where
// exceptions are not wanted (DESIGN.md §6). Either holds a value or an error.
#pragma once

#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace isoproxy {

// The error most calls return: a stable machine-readable kind name plus a
// sentence for humans.
struct Error {
  std::string kind;
  std::string message;
};

template <typename E>
struct Unexpected {
  E error;
};

template <typename E>
Unexpected<std::decay_t<E>> unexpected(E&& e) {
  return {std::forward<E>(e)};
}

template <typename T, typename E = Error>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  template <typename G>
  Result(Unexpected<G> u) : v_(std::in_place_index<1>, E(std::move(u.error))) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return checked_value(); }
  const T& value() const& { return const_cast<Result*>(this)->checked_value(); }
  T&& value() && { return std::move(checked_value()); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const E& error() const {
    if (ok()) std::abort();  // asking a success for its error is a programming error
    return std::get<1>(v_);
  }

 private:
  T& checked_value() {
    if (!ok()) std::abort();  // callers must test ok() first
    return std::get<0>(v_);
  }
  std::variant<T, E> v_;
};

// Result<void>: success carries nothing.
struct Ok {};
template <typename E = Error>
using Status = Result<Ok, E>;

}  // namespace isoproxy
