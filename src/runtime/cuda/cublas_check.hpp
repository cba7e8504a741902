#pragma once
// The cuBLAS twin of DEFER_CUDA_CHECK: a failed call throws defer::DeviceError naming the call, the
// cuBLAS status name and string, and the file:line.
#include <cublas_v2.h>

#include <string>

#include <defer/errors.hpp>

namespace defer::detail {

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  throw DeviceError(std::string(call) + " failed: " + cublasGetStatusName(status) + " (" +
                    cublasGetStatusString(status) + ") at " + file + ":" + std::to_string(line));
}

}  // namespace defer::detail

#define DEFER_CUBLAS_CHECK(call)                                                            \
  do {                                                                                      \
    const cublasStatus_t defer_cublas_status_ = (call);                                     \
    if (defer_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                      \
      ::defer::detail::throw_cublas_error(defer_cublas_status_, #call, __FILE__, __LINE__); \
  } while (0)
