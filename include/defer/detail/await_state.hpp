#pragma once
// The shared state behind Await<T> handles: pending -> running -> ready | failed.
//
// - Exactly once without a global lock: the first waiter claims the state with a compare-exchange
//   (pending -> running) and runs fn; other waiters block on the status word (C++20 atomic wait).
// - Dependencies (Await arguments) are run by an explicit stack (drive), never by recursion, and
//   released through a trampoline, so chains of any depth neither overflow when waited nor when
//   destroyed.
// - A ready value that holds Tensors carries one Completion per device: the event recorded on the
//   stream that produced it. A wait on another stream makes that stream wait on the event (no host
//   blocking) and records the tensors' storage as used there.
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include <defer/device.hpp>
#include <defer/detail/callable_traits.hpp>
#include <defer/detail/tensor_visit.hpp>
#include <defer/tensor.hpp>

namespace defer {
template <class T>
class Await;
}  // namespace defer

namespace defer::detail {

class StreamImpl;
class EventImpl;

template <class T>
struct IsAwait : std::false_type {};
template <class T>
struct IsAwait<Await<T>> : std::true_type {};

// What a wait of an Await<T> returns: const T&, or nothing for an Await<void>. A class template
// rather than a conditional_t, which would form `const void&` for T = void.
template <class T>
struct WaitResult {
  using type = const T&;
};
template <>
struct WaitResult<void> {
  using type = void;
};
template <class T>
using wait_result_t = typename WaitResult<T>::type;

enum class AwaitStatus : std::uint8_t { pending, running, ready, failed };

struct Completion {
  Device device;
  std::uint64_t stream_id;
  std::shared_ptr<EventImpl> event;
};

class AwaitStateBase {
 public:
  struct Dep {
    std::shared_ptr<AwaitStateBase> state;
    bool wait_first;  // rule 2: waited before fn runs (else passed to fn unchanged)
  };

  explicit AwaitStateBase(bool nowait) noexcept
      : status_(nowait ? AwaitStatus::ready : AwaitStatus::pending), nowait_(nowait) {}
  virtual ~AwaitStateBase();
  AwaitStateBase(const AwaitStateBase&) = delete;
  AwaitStateBase& operator=(const AwaitStateBase&) = delete;

  AwaitStatus status() const noexcept { return status_.load(std::memory_order_acquire); }
  bool done() const noexcept { return status() >= AwaitStatus::ready; }
  bool is_nowait() const noexcept { return nowait_; }
  const std::vector<Completion>& completions() const noexcept { return completions_; }
  const std::exception_ptr& error() const noexcept { return error_; }

  virtual const void* fn_if(const std::type_info&) const noexcept { return nullptr; }
  virtual const void* args_if(const std::type_info&) const noexcept { return nullptr; }
  virtual void visit_tensors(const std::function<void(const Tensor&)>&) const {}

  // For drive(): the claim protocol and the dependencies of a claimed state.
  bool try_claim() noexcept;
  void unclaim() noexcept;  // back to pending, after an error in the driver itself
  void block_until_done() const noexcept;
  std::thread::id runner() const noexcept { return runner_.load(std::memory_order_acquire); }
  const std::vector<Dep>& deps() const noexcept { return deps_; }
  // Runs fn on `stream` (a claimed state whose waited dependencies are done). Never throws: an
  // exception of fn becomes the state's cached error.
  virtual void run(StreamImpl& stream) noexcept = 0;

  // The slow path of a wait on a stream other than the producer's (see order_after_completions).
  std::atomic<bool> ordering_lock{false};
  std::vector<std::uint64_t> ordered_streams;

 protected:
  void add_dep(std::shared_ptr<AwaitStateBase> dep, bool wait_first) { deps_.push_back({std::move(dep), wait_first}); }
  // Records one completion event per device that holds the value's tensors, on that device's
  // current stream (the wait's stream for its own device).
  void record_completions(const std::vector<Device>& devices);
  // For states that record their own completion events (op nodes): before finish().
  void add_completion(Completion c) { completions_.push_back(std::move(c)); }
  void finish(std::exception_ptr error) noexcept;  // releases deps, counts, publishes, wakes waiters

 private:
  std::vector<Dep> deps_;
  std::atomic<AwaitStatus> status_;
  std::atomic<std::thread::id> runner_{};
  bool nowait_;
  std::exception_ptr error_;
  std::vector<Completion> completions_;
};

// Runs `root` and whatever it waits first, iteratively, on `stream` (rules 2, 3, 6, 9).
void drive(AwaitStateBase& root, StreamImpl& stream);
// Orders `stream` (or, when null, the current stream of each completion's device) after the
// completions of a ready state: cudaStreamWaitEvent / a queued CPU wait, plus record_stream.
void order_after_completions(AwaitStateBase& state, StreamImpl* stream);
// The stream a wait without a stream runs fn on: the current stream of the default device.
StreamImpl& wait_stream();
std::uint64_t current_stream_id(Device d);
[[noreturn]] void throw_empty_await(const char* op);
[[noreturn]] void throw_empty_await_argument(std::size_t index);

// RAII: makes `stream` current for its device while fn runs (no-op when it already is).
class CurrentStreamScope {
 public:
  explicit CurrentStreamScope(StreamImpl& stream);
  ~CurrentStreamScope();
  CurrentStreamScope(const CurrentStreamScope&) = delete;
  CurrentStreamScope& operator=(const CurrentStreamScope&) = delete;

 private:
  std::shared_ptr<StreamImpl> previous_;  // null: the default stream was current
  StreamImpl* switched_to_ = nullptr;
};

// Is a wait of a ready state on `stream` (null: the current streams) free of ordering work?
inline bool already_ordered(const AwaitStateBase& state, StreamImpl* stream, std::uint64_t stream_id) {
  for (const Completion& c : state.completions()) {
    const std::uint64_t id = stream ? stream_id : current_stream_id(c.device);
    if (id != c.stream_id) return false;
  }
  return true;
}

std::uint64_t stream_id_of(const StreamImpl& s) noexcept;

// Makes a done state's value safe to use on `stream`, or rethrows its cached error.
inline void settle(AwaitStateBase& state, StreamImpl* stream) {
  if (state.status() == AwaitStatus::failed) std::rethrow_exception(state.error());
  if (!state.completions().empty() && !already_ordered(state, stream, stream ? stream_id_of(*stream) : 0))
    order_after_completions(state, stream);
}

template <class T>
class AwaitState : public AwaitStateBase {
 public:
  explicit AwaitState(bool nowait) noexcept : AwaitStateBase(nowait) {}
  // A nowait state: ready at once.
  template <class V>
  AwaitState(std::in_place_t, V&& v) : AwaitStateBase(true), value_(std::forward<V>(v)) {
    if constexpr (may_hold_tensors_v<T>) record_completions(value_devices());
  }

  const T& value() const noexcept { return *value_; }

  // A state made ready (a nowait) is never claimed, so never run; deferred states override this.
  void run(StreamImpl&) noexcept override {}

  void visit_tensors(const std::function<void(const Tensor&)>& f) const override {
    if (value_) detail::visit_tensors(*value_, f);
  }

 protected:
  std::vector<Device> value_devices() const {
    std::vector<Device> devices;
    detail::visit_tensors(*value_, [&](const Tensor& t) {
      for (const Device& d : devices)
        if (d == t.device()) return;
      devices.push_back(t.device());
    });
    return devices;
  }

  std::optional<T> value_;
};

template <>
class AwaitState<void> : public AwaitStateBase {
 public:
  explicit AwaitState(bool nowait) noexcept : AwaitStateBase(nowait) {}
  void run(StreamImpl&) noexcept override {}
};

// The value a dependency hands to fn: the waited value of a done state.
template <class U>
const U& settled_value(const Await<U>& a, StreamImpl& stream) {
  auto& state = *a.state();
  settle(state, &stream);
  return state.value();
}

// The type a bound argument of type A reaches fn as: `const U&` for an Await<U> that is unwrapped
// (waited first, U not void), else the argument itself as an rvalue. Class templates rather than
// conditional_t, which would name A::value_type for every A (and form `const void&`).
template <class A, bool Unwrap>
struct PassedArg {
  using type = A&&;
};
template <class U>
struct PassedArg<Await<U>, true> {
  using type = const U&;
};
template <>
struct PassedArg<Await<void>, true> {
  using type = Await<void>&&;
};

template <class A>
inline constexpr bool is_value_await_v = false;
template <class U>
inline constexpr bool is_value_await_v<Await<U>> = !std::is_void_v<U>;

// How each bound argument reaches fn (rule 2). An Await argument is waited first unless fn's
// declared parameter accepts the Await itself; for callables without one signature (generic
// lambdas, overload sets), Awaits are waited first when fn accepts the values, else passed unchanged.
template <class F, bool ForceWait, class... Args>
struct ArgPlan {
  using Params = CallableParams<std::decay_t<F>>;
  static constexpr bool signature_known = Params::known && Params::size == sizeof...(Args);

  template <std::size_t I>
  using arg_t = std::tuple_element_t<I, std::tuple<Args...>>;

  static constexpr bool waits_when_unknown = std::is_invocable_v<F&, typename PassedArg<Args, true>::type...>;

  template <std::size_t I>
  static constexpr bool wait_first() {
    using A = arg_t<I>;
    if constexpr (!IsAwait<A>::value) {
      return false;
    } else if constexpr (ForceWait) {
      return true;
    } else if constexpr (signature_known) {
      // Passed unchanged only where the declared parameter accepts this Await itself: an
      // Await<Await<U>> given for an Await<U> parameter is waited (once) first (rules 2, 10).
      return !std::is_convertible_v<A&&, typename Params::template at<I>>;
    } else {
      return waits_when_unknown;
    }
  }

  // An Await<void> is never unwrapped (there is no value): waited first or not, it is passed as is.
  template <std::size_t I>
  static constexpr bool unwrap() {
    return wait_first<I>() && is_value_await_v<arg_t<I>>;
  }

  template <std::size_t I>
  using passed_t = typename PassedArg<arg_t<I>, unwrap<I>()>::type;

  template <class Seq>
  struct Result;
  template <std::size_t... I>
  struct Result<std::index_sequence<I...>> {
    // The Await holds a value: a callable returning a reference gives an Await of the referred
    // type (a reference into the arguments would dangle once they are released, rule 7).
    using type = std::remove_cvref_t<std::invoke_result_t<F&, passed_t<I>...>>;
  };
  using result_type = typename Result<std::index_sequence_for<Args...>>::type;
};

// A deferred state: fn and its bound arguments, run on the first wait.
template <class T, class F, bool ForceWait, class... Args>
class DeferredState final : public AwaitState<T> {
  using Plan = ArgPlan<F, ForceWait, Args...>;

 public:
  DeferredState(F fn, std::tuple<Args...> args) : AwaitState<T>(false), fn_(std::move(fn)), args_(std::move(args)) {
    register_deps(std::index_sequence_for<Args...>{});
  }

  const void* fn_if(const std::type_info& t) const noexcept override { return t == typeid(F) ? &fn_ : nullptr; }
  const void* args_if(const std::type_info& t) const noexcept override {
    return t == typeid(std::tuple<Args...>) && this->status() == AwaitStatus::pending && args_ ? &*args_ : nullptr;
  }

  void run(StreamImpl& stream) noexcept override {
    std::exception_ptr error;
    try {
      CurrentStreamScope scope(stream);
      if constexpr (std::is_void_v<T>) {
        call(stream, std::index_sequence_for<Args...>{});
      } else {
        this->value_.emplace(call(stream, std::index_sequence_for<Args...>{}));
        if constexpr (may_hold_tensors_v<T>) this->record_completions(this->value_devices());
      }
    } catch (...) {
      error = std::current_exception();
    }
    args_.reset();  // rule 7: the bound arguments are released once fn has run
    this->finish(std::move(error));
  }

 private:
  template <std::size_t... I>
  void register_deps(std::index_sequence<I...>) {
    (register_dep<I>(), ...);
  }
  template <std::size_t I>
  void register_dep() {
    using A = std::tuple_element_t<I, std::tuple<Args...>>;
    if constexpr (IsAwait<A>::value) {
      const A& a = std::get<I>(*args_);
      if (!a.valid()) throw_empty_await_argument(I);
      this->add_dep(a.state(), Plan::template wait_first<I>());
    }
  }

  template <std::size_t... I>
  decltype(auto) call(StreamImpl& stream, std::index_sequence<I...>) {
    return std::invoke(fn_, pass<I>(stream)...);
  }
  template <std::size_t I>
  decltype(auto) pass(StreamImpl& stream) {
    auto& arg = std::get<I>(*args_);
    if constexpr (Plan::template unwrap<I>()) {
      return settled_value(arg, stream);
    } else {
      if constexpr (Plan::template wait_first<I>()) settle(*arg.state(), &stream);  // an Await<void>
      return std::move(arg);  // released right after the call anyway
    }
  }

  F fn_;
  std::optional<std::tuple<Args...>> args_;
};

}  // namespace defer::detail
