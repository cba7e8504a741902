#pragma once
// Tensors (docs/api.md sections 3 and 8): a copyable handle to a view of a storage on one device:
// a shape, strides (in elements, any integer, 0 for a broadcast dim) and an offset. Copies and views
// share the storage, which lives as long as any of them. Storage comes from the stream-ordered
// caching allocator, or from elsewhere (DLPack, a memory-mapped file: defer/interop.hpp).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <defer/device.hpp>
#include <defer/dtype.hpp>
#include <defer/stream.hpp>

namespace defer {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);     // "[2, 3]"

namespace detail {
struct TensorImpl;
}

class Tensor {
 public:
  Tensor() = default;  // undefined tensor
  bool defined() const noexcept { return impl_ != nullptr; }

  // The accessors below throw std::logic_error on an undefined tensor.
  const Shape& shape() const;
  int64_t dim() const;
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  std::size_t nbytes() const;    // numel() * dtype_size(dtype())
  const void* data_ptr() const;  // device address on cuda of the first element (storage_offset
  void* data_ptr();              // applied); nullptr when numel() == 0
  const Shape& strides() const;  // in elements, one per dim
  int64_t storage_offset() const;  // in elements, from the start of the storage
  bool is_contiguous() const;    // row-major dense

  // For the runtime's own layers.
  explicit Tensor(std::shared_ptr<detail::TensorImpl> impl) noexcept : impl_(std::move(impl)) {}
  const std::shared_ptr<detail::TensorImpl>& impl() const noexcept { return impl_; }

 private:
  const detail::TensorImpl& checked(const char* what) const;
  std::shared_ptr<detail::TensorImpl> impl_;
};

// Uninitialized storage allocated on the current stream of `device`.
Tensor empty(Shape shape, DType dtype = DType::f32, Device device = default_device());
// Every element set to `value` converted to dtype (as to(x, dtype) converts), queued on the current
// stream of `device`. std::invalid_argument when an integer dtype cannot hold the value.
Tensor full(Shape shape, float value, DType dtype = DType::f32, Device device = default_device());
// 0, 1, ..., end - 1 as dtype (end >= 0), queued on the current stream of `device`.
Tensor arange(int64_t end, DType dtype = DType::i64, Device device = default_device());
// Copies host values into a new f32 tensor; the copy is queued on the current stream of `device`.
Tensor from_vector(const std::vector<float>& values, Shape shape, Device device = default_device());
// Typed variant: T is float (f32), int32_t (i32), int64_t (i64) or uint8_t (boolean: 0 or 1; any
// nonzero byte is stored as 1).
template <class T>
Tensor from_host(const std::vector<T>& values, Shape shape, Device device = default_device());

// f32 copy to host (every dtype converted: f16/bf16 exactly, integers rounded, booleans 0 or 1);
// completes the work queued on the current stream of t's device first.
std::vector<float> to_vector(const Tensor& t);
// Exact copy to host; T must match t's dtype as from_host's (float f32, int32_t i32, int64_t i64,
// uint8_t boolean), else std::invalid_argument.
template <class T>
std::vector<T> to_host(const Tensor& t);

// Marks t's storage as used by work queued on `s` (a stream other than the one that allocated it),
// so that its memory is not reused until that work has finished: the recordStream rule.
void record_stream(const Tensor& t, const Stream& s);

}  // namespace defer
