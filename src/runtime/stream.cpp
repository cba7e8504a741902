// Stream and Event handles, default streams and the per-thread current stream of each device.
#include <defer/stream.hpp>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <defer/errors.hpp>

#include "runtime/cpu/cpu_stream.hpp"
#include "runtime/stream_impl.hpp"
#ifdef DEFER_HAVE_CUDA
#include "runtime/cuda/cuda_stream.hpp"
#endif

namespace defer {
namespace detail {

StreamImpl::StreamImpl(Device device) : device_(device) {
  static std::atomic<std::uint64_t> next_id{1};
  id_ = next_id.fetch_add(1, std::memory_order_relaxed);
}

std::shared_ptr<StreamImpl> create_stream(Device d) {
  require_available(d);
#ifdef DEFER_HAVE_CUDA
  if (d.is_cuda()) return std::make_shared<CudaStream>(d.index(), /*owned=*/true);
#endif
  return std::make_shared<CpuStream>();
}

#ifdef DEFER_HAVE_CUDA
namespace {

// Wrappers made by wrap_native_stream, by device and handle, so that wrapping one handle twice gives
// the same Stream while a handle of the first wrapper is alive. Weak: the map never keeps a wrapper
// (and through it a foreign stream) alive. Leaked on purpose, like the default streams.
struct NativeWrappers {
  std::mutex mutex;
  std::map<std::pair<int, void*>, std::weak_ptr<StreamImpl>> streams;
};

NativeWrappers& native_wrappers() {
  static auto* wrappers = new NativeWrappers;
  return *wrappers;
}

}  // namespace
#endif

std::shared_ptr<StreamImpl> wrap_native_stream(Device d, void* handle) {
  if (d.is_cpu()) {
    throw std::invalid_argument(
        "Stream::from_native: cpu has no native streams (a CPU stream is defer's own queue: use Stream::create)");
  }
  if (handle == nullptr) {
    // 0 means the legacy or the per-thread default stream depending on how the caller was compiled
    // (PyTorch reports its default stream as 0): the caller says which.
    throw std::invalid_argument("Stream::from_native: the handle for " + d.str() +
                                " is null; pass cudaStreamLegacy ((void*)1) for the legacy default stream, "
                                "cudaStreamPerThread ((void*)2), or a stream of your own");
  }
  require_available(d);
#ifdef DEFER_HAVE_CUDA
  NativeWrappers& all = native_wrappers();
  std::lock_guard lock(all.mutex);
  std::erase_if(all.streams, [](const auto& entry) { return entry.second.expired(); });
  std::weak_ptr<StreamImpl>& slot = all.streams[{d.index(), handle}];
  if (auto existing = slot.lock()) return existing;
  auto wrapper = std::make_shared<CudaStream>(d.index(), static_cast<cudaStream_t>(handle));
  slot = wrapper;
  return wrapper;
#else
  throw DeviceError(d.str() + " is not available: defer was built without CUDA support");  // not reached
#endif
}

namespace {

// Slot 0 is the CPU, slot i + 1 is cuda:i.
std::size_t slot(Device d) { return d.is_cpu() ? 0 : static_cast<std::size_t>(d.index()) + 1; }

// Leaked on purpose: default streams live until the process exits, and tearing down CUDA objects
// while the CUDA runtime unloads fails. The CPU's exists from the start; a GPU's is created on its
// first use (creating a CUDA stream initializes the device's context, which takes a while, and a
// program that never touches a GPU should not pay for it).
struct DefaultStreams {
  std::vector<std::shared_ptr<StreamImpl>> streams;  // one slot per device, each written once
  std::unique_ptr<std::atomic<bool>[]> ready;         // slot written (acquire before reading it)
  std::mutex mutex;                                   // serializes the writes
};

[[gnu::noinline]] DefaultStreams* make_default_streams() {
  auto* d = new DefaultStreams;
  std::size_t slots = 1;
#ifdef DEFER_HAVE_CUDA
  slots += static_cast<std::size_t>(cuda_device_count());
#endif
  d->streams.resize(slots);
  d->ready = std::make_unique<std::atomic<bool>[]>(slots);
  d->streams[0] = std::make_shared<CpuStream>();
  d->ready[0].store(true, std::memory_order_release);
  return d;
}

// A function-local static: after the first call its check is one load, where std::call_once costs a
// pthread_once call and thread-local stores on every call.
DefaultStreams& default_streams() {
  static DefaultStreams* streams = make_default_streams();
  return *streams;
}

}  // namespace

const std::shared_ptr<StreamImpl>& default_stream_impl(Device d) {
  DefaultStreams& all = default_streams();
  const std::size_t i = slot(d);
  if (i < all.streams.size() && all.ready[i].load(std::memory_order_acquire)) return all.streams[i];
  require_available(d);  // throws for a device without a slot; the CPU always is available
#ifdef DEFER_HAVE_CUDA
  std::lock_guard lock(all.mutex);
  if (!all.streams[i]) all.streams[i] = std::make_shared<CudaStream>(d.index(), /*owned=*/false);
  all.ready[i].store(true, std::memory_order_release);
#endif
  return all.streams[i];
}

namespace {
// Per thread, per device: the current stream, or null for "the default stream".
thread_local std::vector<std::shared_ptr<StreamImpl>> current_streams;
// The ids of this thread's current streams for the first slots (cpu, cuda:0..6), 0 when not known:
// trivially destructible, so current_stream_id, which every wait of a ready value holding tensors
// calls, reads it without a thread_local guard, a vector or a chain of pointers.
constexpr std::size_t kIdSlots = 8;
thread_local std::uint64_t current_ids[kIdSlots] = {};
}  // namespace

std::uint64_t current_stream_id(Device d) {
  const std::size_t i = slot(d);
  if (i >= kIdSlots) return current_stream_impl(d)->id();
  if (const std::uint64_t id = current_ids[i]) return id;
  return current_ids[i] = current_stream_impl(d)->id();
}

const std::shared_ptr<StreamImpl>& current_stream_impl(Device d) {
  const std::size_t i = slot(d);
  if (i < current_streams.size() && current_streams[i]) return current_streams[i];
  return default_stream_impl(d);
}

std::shared_ptr<StreamImpl> exchange_current_stream(Device d, std::shared_ptr<StreamImpl> s) {
  const std::size_t i = slot(d);
  if (current_streams.size() <= i) current_streams.resize(i + 1);
  if (i < kIdSlots) current_ids[i] = s ? s->id() : 0;  // 0: looked up again on the next use
  return std::exchange(current_streams[i], std::move(s));
}

}  // namespace detail

Stream Stream::create(Device d) { return Stream(detail::create_stream(d)); }
Stream Stream::from_native(Device d, void* handle) { return Stream(detail::wrap_native_stream(d, handle)); }
Device Stream::device() const { return impl_->device(); }
void Stream::synchronize() const { impl_->synchronize(); }
bool Stream::query() const { return impl_->query(); }
Event Stream::record() const { return Event(impl_->record()); }
void Stream::wait(const Event& e) const { impl_->wait(e.shared_impl()); }
std::uint64_t Stream::id() const { return impl_->id(); }
void* Stream::native_handle() const { return impl_->native_handle(); }

bool Event::query() const { return !impl_ || impl_->query(); }
void Event::synchronize() const {
  if (impl_) impl_->synchronize();
}

Stream current_stream(Device d) { return Stream(detail::current_stream_impl(d)); }
Stream default_stream(Device d) { return Stream(detail::default_stream_impl(d)); }

StreamGuard::StreamGuard(Stream s) : device_(s.device()) {
  previous_ = detail::exchange_current_stream(device_, s.shared_impl());
}

StreamGuard::~StreamGuard() { detail::exchange_current_stream(device_, std::move(previous_)); }

}  // namespace defer
