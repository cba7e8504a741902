// The defer side of test_dlpack_torch.py: a few C functions that Python calls through ctypes, so
// that the round trip with PyTorch needs no compiled Python extension (and no Python headers).
// Tensors and streams cross as opaque handles (heap-allocated defer::Tensor / defer::Stream); a
// function that fails returns null or -1 and leaves its message in shim_last_error(). DLPack
// pointers are wrapped in relays that count their deleter calls, so that the test can check that
// each side releases the other's memory exactly once.
#include <dlpack/dlpack.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include <defer/defer.hpp>
#include <defer/interop.hpp>

#include "runtime/backend.hpp"
#include "runtime/cpu/cpu_stream.hpp"
#include "runtime/tensor_impl.hpp"
#ifdef DEFER_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "cuda/launch.hpp"
#endif

using namespace defer;

namespace {

thread_local std::string last_error;

std::atomic<std::int64_t> exports_alive{0};      // to_dlpack results whose deleter has not run
std::atomic<std::int64_t> imports_released{0};   // deleters of imported DLManagedTensors that ran

// Runs f, turning an exception into `failed` and its message.
template <class F, class R>
R guarded(F f, R failed) {
  try {
    return f();
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown exception";
  }
  return failed;
}

// A DLManagedTensor that forwards to another and counts its own deleter call.
struct Relay {
  DLManagedTensor outer{};
  DLManagedTensor* inner;
  std::atomic<std::int64_t>* counter;
  std::int64_t step;
};

void relay_deleter(DLManagedTensor* m) {
  auto* r = static_cast<Relay*>(m->manager_ctx);
  if (r->inner->deleter != nullptr) r->inner->deleter(r->inner);
  r->counter->fetch_add(r->step);
  delete r;
}

DLManagedTensor* relay(DLManagedTensor* inner, std::atomic<std::int64_t>* counter, std::int64_t step) {
  auto* r = new Relay{{}, inner, counter, step};
  r->outer.dl_tensor = inner->dl_tensor;  // shape and strides stay owned by `inner`
  r->outer.manager_ctx = r;
  r->outer.deleter = relay_deleter;
  return &r->outer;
}

Device device_of(int cuda, int index) { return cuda != 0 ? Device::cuda(index) : Device::cpu(); }

Tensor& tensor(void* handle) { return *static_cast<Tensor*>(handle); }
Stream& stream(void* handle) { return *static_cast<Stream*>(handle); }
// The stream a call runs on: the given one, else the current stream of the tensor's device.
Stream stream_or_current(void* s, const Tensor& t) { return s != nullptr ? stream(s) : current_stream(t.device()); }

}  // namespace

extern "C" {

const char* shim_last_error() { return last_error.c_str(); }
int shim_cuda_available() { return cuda_available() ? 1 : 0; }
std::int64_t shim_exports_alive() { return exports_alive.load(); }
std::int64_t shim_imports_released() { return imports_released.load(); }

// values (n floats, row-major) as a new contiguous tensor of `dtype` (DType's numbering) on the device.
void* shim_from_floats(const float* values, const std::int64_t* shape, int ndim, int dtype, int cuda, int index) {
  return guarded(
      [&]() -> void* {
        const Shape s(shape, shape + ndim);
        std::int64_t n = 1;
        for (std::int64_t e : s) n *= e;
        const Tensor f32 = from_vector(std::vector<float>(values, values + n), s, device_of(cuda, index));
        return new Tensor(wait(to(f32, static_cast<DType>(dtype))));
      },
      static_cast<void*>(nullptr));
}

// A view of t's storage (detail::make_view: any shape, strides and offset within it).
void* shim_view(void* t, const std::int64_t* shape, const std::int64_t* strides, int ndim, std::int64_t offset) {
  return guarded(
      [&]() -> void* {
        return new Tensor(detail::make_view(tensor(t), Shape(shape, shape + ndim), Shape(strides, strides + ndim), offset));
      },
      static_cast<void*>(nullptr));
}

void shim_free(void* t) { delete static_cast<Tensor*>(t); }

// Shape, strides (up to 8 dims), dtype, device (-1: the CPU, else the CUDA index), first element
// address and storage offset.
int shim_info(void* t, std::int64_t* shape, std::int64_t* strides, int* ndim, int* dtype, int* device,
              std::uint64_t* data, std::int64_t* storage_offset) {
  return guarded(
      [&] {
        const Tensor& x = tensor(t);
        if (x.dim() > 8) throw std::invalid_argument("shim_info: more than 8 dims");
        *ndim = static_cast<int>(x.dim());
        for (std::int64_t d = 0; d < x.dim(); ++d) {
          shape[d] = x.shape()[static_cast<std::size_t>(d)];
          strides[d] = x.strides()[static_cast<std::size_t>(d)];
        }
        *dtype = static_cast<int>(x.dtype());
        *device = x.device().is_cuda() ? x.device().index() : -1;
        *data = reinterpret_cast<std::uintptr_t>(x.data_ptr());
        *storage_offset = x.storage_offset();
        return 0;
      },
      -1);
}

// to_vector(t) into out (n floats).
int shim_to_floats(void* t, float* out, std::int64_t n) {
  return guarded(
      [&] {
        const std::vector<float> v = to_vector(tensor(t));
        if (static_cast<std::int64_t>(v.size()) != n) throw std::invalid_argument("shim_to_floats: wrong count");
        std::memcpy(out, v.data(), v.size() * sizeof(float));
        return 0;
      },
      -1);
}

// to_dlpack(t), relayed so that exports_alive counts it until its deleter runs.
void* shim_to_dlpack(void* t) {
  return guarded(
      [&]() -> void* {
        DLManagedTensor* m = relay(to_dlpack(tensor(t)), &exports_alive, -1);
        exports_alive.fetch_add(1);
        return m;
      },
      static_cast<void*>(nullptr));
}

// from_dlpack(m), relayed so that imports_released counts its deleter. Owns m even when it fails.
void* shim_from_dlpack(void* m) {
  return guarded(
      [&]() -> void* {
        return new Tensor(from_dlpack(relay(static_cast<DLManagedTensor*>(m), &imports_released, 1)));
      },
      static_cast<void*>(nullptr));
}

// For a capsule that nobody consumed.
void shim_call_deleter(void* m) {
  auto* managed = static_cast<DLManagedTensor*>(m);
  if (managed->deleter != nullptr) managed->deleter(managed);
}

// wait(add(t, s)) on `s` (null: the current stream of t's device). A defer kernel reading t.
void* shim_add(void* t, float s, void* on) {
  return guarded(
      [&]() -> void* { return new Tensor(wait(add(tensor(t), s), stream_or_current(on, tensor(t)))); },
      static_cast<void*>(nullptr));
}

// A defer kernel writing `value` into every element of t (f32, contiguous) in place, queued on `on`
// (null: the current stream). Returns without waiting for it.
int shim_fill(void* t, float value, void* on) {
  return guarded(
      [&] {
        Tensor& x = tensor(t);
        if (x.dtype() != DType::f32 || !x.is_contiguous()) throw std::invalid_argument("shim_fill: f32, contiguous");
        std::uint32_t bits = 0;
        std::memcpy(&bits, &value, sizeof bits);
        const Stream s = stream_or_current(on, x);
        detail::backend_for(x.device()).fill(x.data_ptr(), x.numel(), sizeof(float), bits, s.impl());
        return 0;
      },
      -1);
}

// Keeps a stream busy for `ms` milliseconds (a kernel on CUDA, a task on the CPU), so that work
// queued after it shows whether it was ordered or raced.
int shim_busy(void* on, int ms) {
  return guarded(
      [&] {
        const Stream& s = stream(on);
#ifdef DEFER_HAVE_CUDA
        if (s.device().is_cuda()) {
          kernels::cuda::busy_wait(static_cast<std::uint64_t>(ms) * 1'000'000, static_cast<cudaStream_t>(s.native_handle()));
          return 0;
        }
#endif
        detail::enqueue_cpu(s.impl(), [ms] { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); });
        return 0;
      },
      -1);
}

void* shim_stream_create(int cuda, int index) {
  return guarded([&]() -> void* { return new Stream(Stream::create(device_of(cuda, index))); }, static_cast<void*>(nullptr));
}
void* shim_stream_current(int cuda, int index) {
  return guarded([&]() -> void* { return new Stream(current_stream(device_of(cuda, index))); }, static_cast<void*>(nullptr));
}
void* shim_stream_from_native(int index, void* handle) {
  return guarded([&]() -> void* { return new Stream(Stream::from_native(Device::cuda(index), handle)); },
                 static_cast<void*>(nullptr));
}
void shim_stream_free(void* s) { delete static_cast<Stream*>(s); }
void* shim_stream_native(void* s) { return stream(s).native_handle(); }
int shim_stream_synchronize(void* s) {
  return guarded(
      [&] {
        stream(s).synchronize();
        return 0;
      },
      -1);
}
// Work queued on `waiter` from now on runs after the work queued on `producer` so far (no host wait).
int shim_stream_wait(void* waiter, void* producer) {
  return guarded(
      [&] {
        stream(waiter).wait(stream(producer).record());
        return 0;
      },
      -1);
}

std::int64_t shim_allocated_bytes(int cuda, int index) {
  return guarded([&] { return static_cast<std::int64_t>(memory_stats(device_of(cuda, index)).allocated_bytes); },
                 std::int64_t{-1});
}

}  // extern "C"
