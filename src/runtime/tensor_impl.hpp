#pragma once
// What a Tensor handle points to: shape, dtype, device and a shared allocation.
#include <memory>

#include <defer/tensor.hpp>

#include "runtime/stream_ordered_pool.hpp"

namespace defer::detail {

struct TensorImpl {
  Shape shape;
  int64_t numel;
  DType dtype;
  Device device;
  std::shared_ptr<Allocation> storage;  // null when numel == 0

  void* data() const noexcept { return storage ? storage->data() : nullptr; }
  std::size_t nbytes() const noexcept { return static_cast<std::size_t>(numel) * dtype_size(dtype); }
};

// Validates a shape (no negative extent, no int64 overflow of the element or byte count) and
// returns its element count; `op` names the caller in the std::invalid_argument it throws.
int64_t checked_numel(const Shape& shape, DType dtype, const char* op);
// A new tensor whose storage is allocated stream ordered on `stream`.
Tensor allocate_tensor(Shape shape, DType dtype, StreamImpl& stream, const char* op);

}  // namespace defer::detail
