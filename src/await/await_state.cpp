// The non-template half of Await: the claim protocol, the iterative driver, the release trampoline
// and cross-stream ordering.
#include <defer/detail/await_state.hpp>

#include <stdexcept>
#include <string>

#include <defer/detail/stats_counters.hpp>
#include <defer/stream.hpp>

#include "runtime/stream_impl.hpp"

namespace defer::detail {
namespace {

// Destroying the last handle of a chain would destroy its dependency, whose destructor destroys
// the next one, and so on: a chain of a million Awaits overflows the stack. Instead, the outermost
// release on a thread drains a queue that nested releases only append to.
thread_local std::vector<std::shared_ptr<AwaitStateBase>>* release_queue = nullptr;

// Callers skip the call when deps is empty, as it is for most states (a leaf has none, a waited
// state released them in finish()): the common destruction then costs no call at all.
void release(std::vector<AwaitStateBase::Dep>& deps) noexcept {
  if (release_queue != nullptr) {
    for (auto& d : deps) release_queue->push_back(std::move(d.state));
    deps.clear();
    return;
  }
  // The outermost release drops its references in place; `queue` allocates only when a dependency
  // destroyed here still holds dependencies of its own (a chain that was never waited).
  std::vector<std::shared_ptr<AwaitStateBase>> queue;
  release_queue = &queue;
  for (auto& d : deps) d.state.reset();  // may run a destructor that appends to `queue`
  deps.clear();
  while (!queue.empty()) {
    std::shared_ptr<AwaitStateBase> last = std::move(queue.back());
    queue.pop_back();
    last.reset();  // may run a destructor that appends its own dependencies to `queue`
  }
  release_queue = nullptr;
}

class SpinLock {
 public:
  explicit SpinLock(std::atomic<bool>& flag) : flag_(flag) {
    while (flag_.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
  }
  ~SpinLock() { flag_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool>& flag_;
};

}  // namespace

AwaitStateBase::~AwaitStateBase() {
  if (!deps_.empty()) release(deps_);
}

bool AwaitStateBase::try_claim() noexcept {
  AwaitStatus expected = AwaitStatus::pending;
  if (!status_.compare_exchange_strong(expected, AwaitStatus::running, std::memory_order_acq_rel)) return false;
  runner_.store(std::this_thread::get_id(), std::memory_order_release);
  return true;
}

void AwaitStateBase::unclaim() noexcept {
  runner_.store(std::thread::id{}, std::memory_order_release);
  status_.store(AwaitStatus::pending, std::memory_order_release);
  status_.notify_all();
}

void AwaitStateBase::block_until_done() const noexcept {
  for (AwaitStatus s = status(); s == AwaitStatus::running; s = status()) status_.wait(s, std::memory_order_acquire);
}

void AwaitStateBase::record_completions(const std::vector<Device>& devices) {
  for (const Device& d : devices) {
    StreamImpl& s = *current_stream_impl(d);
    completions_.push_back(Completion{d, s.id(), s.record()});
  }
}

void AwaitStateBase::finish(std::exception_ptr error) noexcept {
  if (!deps_.empty()) release(deps_);
  error_ = std::move(error);
  stats_counters().awaits_run.fetch_add(1, std::memory_order_relaxed);
  status_.store(error_ ? AwaitStatus::failed : AwaitStatus::ready, std::memory_order_release);
  status_.notify_all();
}

void drive(AwaitStateBase& root, StreamImpl& stream) {
  // Depth-first over the dependencies to wait first, with an explicit stack. A state is claimed
  // (pending -> running) before its dependencies are pushed, so only its runner reads them, and run
  // after they are done. States claimed by other threads are waited for. The graph is acyclic
  // (dependencies exist before their dependents), so threads blocking on each other cannot cycle.
  struct Entry {
    AwaitStateBase* state;  // kept alive by the caller (root) or by a claimed dependent's deps
    bool claimed;
  };
  std::vector<Entry> stack;
  stack.push_back({&root, false});
  try {
    while (!stack.empty()) {
      Entry top = stack.back();
      if (top.claimed) {
        stack.pop_back();
        top.state->run(stream);
        continue;
      }
      const AwaitStatus status = top.state->status();
      if (status == AwaitStatus::ready || status == AwaitStatus::failed) {
        stack.pop_back();
        continue;
      }
      if (status == AwaitStatus::running) {
        if (top.state->runner() == std::this_thread::get_id())
          throw std::logic_error("wait: an Await was waited from inside its own fn (or a dependency's); it would never finish");
        top.state->block_until_done();
        continue;  // look again: done, or given back (pending) by a driver that failed, to claim
      }
      if (!top.state->try_claim()) continue;  // another thread claimed it first: look again
      stack.back().claimed = true;
      for (const auto& dep : top.state->deps())
        if (dep.wait_first && !dep.state->done()) stack.push_back({dep.state.get(), false});
    }
  } catch (...) {
    // Only the driver itself throws (fn's errors are cached by run): give back what we claimed.
    for (const Entry& e : stack)
      if (e.claimed) e.state->unclaim();
    throw;
  }
}

void order_after_completions(AwaitStateBase& state, StreamImpl* stream) {
  for (const Completion& c : state.completions()) {
    StreamImpl& s = stream ? *stream : *current_stream_impl(c.device);
    if (s.id() == c.stream_id) continue;
    if (!(s.device() == c.device)) {
      throw std::invalid_argument("wait: the result holds tensors on " + c.device.str() + " but the wait's stream is on " +
                                  s.device().str() + "; copy them with to() first");
    }
    SpinLock lock(state.ordering_lock);
    bool seen = false;
    for (std::uint64_t id : state.ordered_streams) seen = seen || id == s.id();
    if (seen) continue;
    s.wait(c.event);
    const Stream handle(s.shared_from_this());
    state.visit_tensors([&](const Tensor& t) {
      if (t.device() == c.device) record_stream(t, handle);
    });
    state.ordered_streams.push_back(s.id());
  }
}

StreamImpl& wait_stream() { return *current_stream_impl(default_device()); }

std::uint64_t stream_id_of(const StreamImpl& s) noexcept { return s.id(); }

void throw_empty_await(const char* op) {
  throw std::logic_error(std::string(op) + ": the Await is empty (default constructed)");
}

void throw_empty_await_argument(std::size_t index) {
  throw std::logic_error("awaitable: argument " + std::to_string(index + 1) + " is an empty Await");
}

CurrentStreamScope::CurrentStreamScope(StreamImpl& stream) {
  if (current_stream_impl(stream.device()).get() == &stream) return;  // the usual case: nothing to do
  previous_ = exchange_current_stream(stream.device(), stream.shared_from_this());
  switched_to_ = &stream;
}

CurrentStreamScope::~CurrentStreamScope() {
  if (switched_to_) exchange_current_stream(switched_to_->device(), std::move(previous_));
}

}  // namespace defer::detail
