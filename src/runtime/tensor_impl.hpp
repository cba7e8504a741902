#pragma once
// What a Tensor handle points to: a view (shape, strides in elements, offset in elements) of a
// shared storage, with its dtype and device (docs/api.md section 8).
#include <memory>

#include <defer/tensor.hpp>

#include "runtime/storage.hpp"
#include "runtime/stream_ordered_pool.hpp"

namespace defer::detail {

struct TensorImpl {
  Shape shape;
  Shape strides;               // one per dim, in elements; any integer (0: a broadcast dim)
  int64_t storage_offset = 0;  // of the first element, in elements
  int64_t numel = 0;
  DType dtype = DType::f32;
  Device device = Device::cpu();
  std::shared_ptr<Storage> storage;  // null when numel == 0
  bool contiguous = true;            // row-major dense (cached: is_contiguous(shape, strides))

  void* data() const noexcept {
    return storage ? static_cast<char*>(storage->data()) + storage_offset * static_cast<int64_t>(dtype_size(dtype))
                   : nullptr;
  }
  // numel * element size: what a contiguous tensor spans.
  std::size_t nbytes() const noexcept { return static_cast<std::size_t>(numel) * dtype_size(dtype); }
};

// Row-major strides of a dense tensor of `shape`.
Shape contiguous_strides(const Shape& shape);
// Whether a tensor of `shape` with `strides` is row-major dense (extent-1 dims may have any stride).
bool is_contiguous(const Shape& shape, const Shape& strides) noexcept;

// Validates a shape (no negative extent, no int64 overflow of the element or byte count) and
// returns its element count; `op` names the caller in the std::invalid_argument it throws.
int64_t checked_numel(const Shape& shape, DType dtype, const char* op);
// A new contiguous tensor whose storage is allocated stream ordered on `stream`.
Tensor allocate_tensor(Shape shape, DType dtype, StreamImpl& stream, const char* op);
// A view of base's storage (shape, strides and offset in elements; the caller checked that it lies
// within what base may reach). Shares the storage; launches nothing.
Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t storage_offset);
// A tensor over storage made elsewhere (numel == 0 allows a null storage).
Tensor wrap_storage(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t storage_offset, DType dtype,
                    Device device);

}  // namespace defer::detail
