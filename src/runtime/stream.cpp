// Stream and Event handles, default streams and the per-thread current stream of each device.
#include <defer/stream.hpp>

#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

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

namespace {

// Slot 0 is the CPU, slot i + 1 is cuda:i.
std::size_t slot(Device d) { return d.is_cpu() ? 0 : static_cast<std::size_t>(d.index()) + 1; }

struct DefaultStreams {
  std::once_flag once;
  std::vector<std::shared_ptr<StreamImpl>> streams;  // filled once, then read without locks
};

// Leaked on purpose: default streams live until the process exits, and tearing down CUDA objects
// while the CUDA runtime unloads fails.
DefaultStreams& default_streams() {
  static auto* d = new DefaultStreams;
  return *d;
}

}  // namespace

const std::shared_ptr<StreamImpl>& default_stream_impl(Device d) {
  require_available(d);
  auto& defaults = default_streams();
  std::call_once(defaults.once, [&] {
    defaults.streams.push_back(std::make_shared<CpuStream>());
#ifdef DEFER_HAVE_CUDA
    for (int i = 0; i < cuda_device_count(); ++i) defaults.streams.push_back(std::make_shared<CudaStream>(i, false));
#endif
  });
  return defaults.streams[slot(d)];
}

namespace {
// Per thread, per device: the current stream, or null for "the default stream".
thread_local std::vector<std::shared_ptr<StreamImpl>> current_streams;
}  // namespace

const std::shared_ptr<StreamImpl>& current_stream_impl(Device d) {
  const std::size_t i = slot(d);
  if (i < current_streams.size() && current_streams[i]) return current_streams[i];
  return default_stream_impl(d);
}

std::shared_ptr<StreamImpl> exchange_current_stream(Device d, std::shared_ptr<StreamImpl> s) {
  const std::size_t i = slot(d);
  if (current_streams.size() <= i) current_streams.resize(i + 1);
  return std::exchange(current_streams[i], std::move(s));
}

}  // namespace detail

Stream Stream::create(Device d) { return Stream(detail::create_stream(d)); }
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
