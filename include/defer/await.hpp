#pragma once
// Await<T> (docs/api.md section 4): a deferred value after PyTorch's torch.jit._awaitable, made stream
// aware. awaitable(fn, args...) runs nothing; the first wait runs fn once, on the wait's stream, and
// caches the value (or the exception); every later wait returns the very same object, ordered after
// its producer by an event rather than by blocking the host.
#include <memory>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

#include <defer/detail/await_state.hpp>
#include <defer/stream.hpp>
#include <defer/tensor.hpp>

namespace defer {

template <class T>
class Await {  // copyable handle: copies share one state
 public:
  using value_type = T;

  Await() = default;  // empty: waiting it throws std::logic_error
  Await(Tensor t)     // implicit, only for Await<Tensor>: same as nowait(t)
    requires std::is_same_v<T, Tensor>
      : state_(std::make_shared<detail::AwaitState<Tensor>>(std::in_place, std::move(t))) {}

  bool valid() const noexcept { return state_ != nullptr; }
  bool is_nowait() const noexcept { return state_ && state_->is_nowait(); }
  // fn has run (with a value or an error), or this is a nowait: a wait runs nothing.
  bool is_ready() const noexcept { return state_ && state_->done(); }

  // Wait on the current stream, then forward.
  detail::wait_result_t<T> operator*() const
    requires(!std::is_void_v<T>);
  const T* operator->() const
    requires(!std::is_void_v<T>)
  {
    return &**this;
  }

  // The deferred callable, if its type is F; nullptr for a nowait or another type.
  template <class F>
  const F* fn() const noexcept {
    return state_ ? static_cast<const F*>(state_->fn_if(typeid(F))) : nullptr;
  }
  // The bound arguments while fn has not run and their types are exactly A...; else nullptr.
  template <class... A>
  const std::tuple<A...>* args() const noexcept {
    return state_ ? static_cast<const std::tuple<A...>*>(state_->args_if(typeid(std::tuple<A...>))) : nullptr;
  }

  // For the runtime's own layers.
  explicit Await(std::shared_ptr<detail::AwaitState<T>> state) noexcept : state_(std::move(state)) {}
  const std::shared_ptr<detail::AwaitState<T>>& state() const noexcept { return state_; }

 private:
  std::shared_ptr<detail::AwaitState<T>> state_;
};

template <class T>
inline constexpr bool is_await_v = detail::IsAwait<std::remove_cv_t<T>>::value;

namespace detail {

// Everything but the hot case: empty, not run yet, failed, or holding tensors to order.
template <class T>
[[gnu::noinline]] wait_result_t<T> wait_slow(const Await<T>& aw, StreamImpl* stream) {
  AwaitStateBase* state = aw.state().get();
  if (state == nullptr) throw_empty_await("wait");
  if (!state->done()) drive(*state, stream ? *stream : wait_stream());
  settle(*state, stream);
  if constexpr (!std::is_void_v<T>) return aw.state()->value();
}

// The hot case, inlined into the caller: a ready value with nothing to order, because it holds no
// tensors or because they were produced on one device by the very stream this wait is on.
template <class T>
inline wait_result_t<T> wait_impl(const Await<T>& aw, StreamImpl* stream) {
  const AwaitStateBase* state = aw.state().get();
  if (state != nullptr && state->status() == AwaitStatus::ready) [[likely]] {
    const std::vector<Completion>& cs = state->completions();
    if (cs.empty() || (cs.size() == 1 && cs.front().stream_id ==
                                             (stream ? stream_id_of(*stream) : current_stream_id(cs.front().device)))) {
      if constexpr (std::is_void_v<T>) {
        return;
      } else {
        return aw.state()->value();
      }
    }
  }
  return wait_slow(aw, stream);
}

template <class T, class F, bool ForceWait, class... Args>
Await<T> make_deferred(F&& fn, Args&&... args) {
  using State = DeferredState<T, std::decay_t<F>, ForceWait, std::decay_t<Args>...>;
  return Await<T>(std::make_shared<State>(std::forward<F>(fn), std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)));
}

template <class F, class... Args>
using awaitable_result_t = typename ArgPlan<std::decay_t<F>, false, std::decay_t<Args>...>::result_type;

}  // namespace detail

// The value of aw, waited on the current stream (fn runs there if it has not yet run).
template <class T>
detail::wait_result_t<T> wait(const Await<T>& aw) {
  return detail::wait_impl(aw, nullptr);
}
// The value of aw, waited on stream s. By reference: a Stream is a shared_ptr handle, and a copy
// costs two atomic read-modify-writes, more than all the rest of a ready wait.
template <class T>
detail::wait_result_t<T> wait(const Await<T>& aw, const Stream& s) {
  return detail::wait_impl(aw, &s.impl());
}

template <class T>
detail::wait_result_t<T> Await<T>::operator*() const
  requires(!std::is_void_v<T>)
{
  return wait(*this);
}

// An Await that runs fn(args...) on its first wait; nothing runs here. Arguments are bound by value
// (moved) and handed to fn as rvalues; Await arguments are dependencies (rule 2).
template <class F, class... Args>
Await<detail::awaitable_result_t<F, Args...>> awaitable(F fn, Args... args) {
  using R = detail::awaitable_result_t<F, Args...>;
  return detail::make_deferred<R, F, false>(std::move(fn), std::move(args)...);
}

// An Await that is ready at once. For a value holding Tensors, the completion event of the current
// stream of each of their devices is captured, so that waits on other streams are ordered after
// the work still queued there (rule 8).
template <class T>
Await<std::decay_t<T>> nowait(T value) {
  return Await<std::decay_t<T>>(std::make_shared<detail::AwaitState<std::decay_t<T>>>(std::in_place, std::move(value)));
}

// A deferred f(wait(aw)) (f() for an Await<void>).
template <class T, class F>
auto then(const Await<T>& aw, F f) {
  if (!aw.valid()) detail::throw_empty_await("then");
  if constexpr (std::is_void_v<T>) {
    auto call = [f = std::move(f)](const Await<void>&) mutable { return f(); };
    using R = std::remove_cvref_t<std::invoke_result_t<decltype(call)&, const Await<void>&>>;
    return detail::make_deferred<R, decltype(call), true>(std::move(call), aw);
  } else {
    using R = std::remove_cvref_t<std::invoke_result_t<F&, const T&>>;
    return detail::make_deferred<R, F, true>(std::move(f), aw);
  }
}

}  // namespace defer
