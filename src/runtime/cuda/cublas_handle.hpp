#pragma once
// cuBLAS handles for the op layer: one per thread and device (a handle must not be used by two
// threads at once), bound to the stream of the call and to a workspace from the stream-ordered pool.
#include <cublas_v2.h>

#include "runtime/stream_impl.hpp"

namespace defer::detail {

// A handle for `stream`'s device, with cublasSetStream(stream) and a workspace allocated on that
// stream already applied. Throws DeviceError naming the failing cuBLAS call and its status.
cublasHandle_t cublas_handle(StreamImpl& stream);

}  // namespace defer::detail
