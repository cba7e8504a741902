#pragma once
// Finds the Tensors inside an Await's value, so that a wait can order other streams after the work
// that produced them and mark their storage as used there. Knows Tensor, the standard containers
// and tuples; a user type opts in with an ADL function
//     template <class F> void defer_visit_tensors(const MyType& v, F&& f);  // calls f(tensor) for each
#include <array>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <defer/tensor.hpp>

namespace defer::detail {

template <class T, class = void>
struct TensorVisit {
  static constexpr bool may_hold = false;
  template <class F>
  static void visit(const T&, F&&) {}
};

template <class T>
inline constexpr bool may_hold_tensors_v = TensorVisit<std::remove_cvref_t<T>>::may_hold;

template <class T, class F>
void visit_tensors(const T& v, F&& f) {
  TensorVisit<std::remove_cvref_t<T>>::visit(v, f);
}

template <>
struct TensorVisit<Tensor> {
  static constexpr bool may_hold = true;
  template <class F>
  static void visit(const Tensor& t, F&& f) {
    if (t.defined()) f(t);
  }
};

template <class E, class A>
struct TensorVisit<std::vector<E, A>> {
  static constexpr bool may_hold = may_hold_tensors_v<E>;
  template <class F>
  static void visit(const std::vector<E, A>& v, F&& f) {
    if constexpr (may_hold)
      for (const auto& e : v) visit_tensors(e, f);
  }
};

template <class E, std::size_t N>
struct TensorVisit<std::array<E, N>> {
  static constexpr bool may_hold = may_hold_tensors_v<E>;
  template <class F>
  static void visit(const std::array<E, N>& v, F&& f) {
    if constexpr (may_hold)
      for (const auto& e : v) visit_tensors(e, f);
  }
};

template <class E>
struct TensorVisit<std::optional<E>> {
  static constexpr bool may_hold = may_hold_tensors_v<E>;
  template <class F>
  static void visit(const std::optional<E>& v, F&& f) {
    if constexpr (may_hold)
      if (v) visit_tensors(*v, f);
  }
};

template <class A, class B>
struct TensorVisit<std::pair<A, B>> {
  static constexpr bool may_hold = may_hold_tensors_v<A> || may_hold_tensors_v<B>;
  template <class F>
  static void visit(const std::pair<A, B>& v, F&& f) {
    visit_tensors(v.first, f);
    visit_tensors(v.second, f);
  }
};

template <class... Ts>
struct TensorVisit<std::tuple<Ts...>> {
  static constexpr bool may_hold = (may_hold_tensors_v<Ts> || ...);
  template <class F>
  static void visit(const std::tuple<Ts...>& v, F&& f) {
    std::apply([&](const auto&... e) { (visit_tensors(e, f), ...); }, v);
  }
};

// User types with an ADL defer_visit_tensors(const T&, F&&).
struct AnyTensorCallback {
  void operator()(const Tensor&) const {}
};
template <class T>
struct TensorVisit<T, std::void_t<decltype(defer_visit_tensors(std::declval<const T&>(), AnyTensorCallback{}))>> {
  static constexpr bool may_hold = true;
  template <class F>
  static void visit(const T& v, F&& f) {
    defer_visit_tensors(v, f);
  }
};

}  // namespace defer::detail
