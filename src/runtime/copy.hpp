#pragma once
// Copies: bytes between host memory and any device, and strided tensors made contiguous, queued on a
// stream.
#include <cstddef>
#include <memory>
#include <vector>

#include <defer/tensor.hpp>

#include "runtime/stream_impl.hpp"

namespace defer::detail {

// Copies `bytes` from device memory or host memory `src` to `dst`, queued on `stream`. Both
// pointers must stay valid until the copy has run (the caller orders that, as with kernels).
void copy_async(void* dst, const void* src, std::size_t bytes, StreamImpl& stream);
// Copies host bytes that the caller may release at once: the CPU backend keeps its own copy until
// the task runs; cudaMemcpyAsync from pageable memory stages the bytes before returning.
void copy_from_host_async(void* dst, std::shared_ptr<const std::vector<unsigned char>> host, StreamImpl& stream);

// A synchronous copy from memory of `src_device` to host memory, for CPU queue workers that
// already waited for the source's producer.
void copy_blocking(void* dst, const void* src, std::size_t bytes, Device src_device);

// A contiguous copy of t (any strides) queued on `stream` (on t's device, ordered after t's producer
// by the caller): one counted kernel launch. t itself when it is contiguous already.
Tensor contiguous_copy(const Tensor& t, StreamImpl& stream);

// src on `device` (src itself when it is there already), queued on dst_stream (a stream of
// `device`) and ordered after src's producer on the current stream of src's device. A copy between
// devices moves one dense span: src must be contiguous (the executor gathers a strided one first).
Tensor copy_to_device(const Tensor& src, const Shape& shape, Device device, StreamImpl& dst_stream);

}  // namespace defer::detail
