#pragma once
// The declared parameter types of a callable, where it has exactly one signature (a function, a
// function pointer, a lambda or functor with one non-template operator()). awaitable() uses them
// for rule 2 of docs/api.md: an Await argument is passed unchanged to a parameter that accepts the Await,
// and waited first otherwise. Generic lambdas and overload sets have no single signature.
#include <cstddef>
#include <tuple>
#include <type_traits>

namespace defer::detail {

template <class... P>
struct ParamList {
  static constexpr bool known = true;
  static constexpr std::size_t size = sizeof...(P);
  template <std::size_t I>
  using at = std::tuple_element_t<I, std::tuple<P...>>;
};

struct UnknownParams {
  static constexpr bool known = false;
  static constexpr std::size_t size = 0;
};

template <class M>
struct MemberParams : UnknownParams {};
#define DEFER_MEMBER_PARAMS(QUALS) \
  template <class R, class C, class... P> \
  struct MemberParams<R (C::*)(P...) QUALS> : ParamList<P...> {};
DEFER_MEMBER_PARAMS()
DEFER_MEMBER_PARAMS(const)
DEFER_MEMBER_PARAMS(noexcept)
DEFER_MEMBER_PARAMS(const noexcept)
DEFER_MEMBER_PARAMS(&)
DEFER_MEMBER_PARAMS(const&)
DEFER_MEMBER_PARAMS(& noexcept)
DEFER_MEMBER_PARAMS(const& noexcept)
#undef DEFER_MEMBER_PARAMS

template <class F, class = void>
struct CallableParams : UnknownParams {};

template <class R, class... P>
struct CallableParams<R (*)(P...)> : ParamList<P...> {};
template <class R, class... P>
struct CallableParams<R (*)(P...) noexcept> : ParamList<P...> {};

template <class F>
struct CallableParams<F, std::void_t<decltype(&F::operator())>> : MemberParams<decltype(&F::operator())> {};

}  // namespace defer::detail
