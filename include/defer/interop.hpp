#pragma once
// Interop (docs/api.md section 12): tensors to and from DLPack without a copy, and safetensors files.
// Not included by defer/defer.hpp, so that only code that uses it needs DLPack's header.
#include <map>
#include <string>

#include <dlpack/dlpack.h>

#include <defer/device.hpp>
#include <defer/tensor.hpp>

namespace defer {

// A DLPack view of t (zero copy: the same storage, shape, strides and offset). t's storage stays
// alive until the caller calls ->deleter(m) (exactly once). The work producing t that is queued on
// the current stream of t's device has completed when this returns (see docs/api.md section 12): it
// synchronizes that stream. boolean is exported as DLPack's bool type code (6) with 8 bits.
DLManagedTensor* to_dlpack(const Tensor& t);
// A Tensor viewing m's memory (zero copy). Takes ownership of m: its deleter is called exactly once,
// when the last Tensor sharing the memory is gone and the work defer queued on it has finished (the
// current stream at import and the streams it was marked as used on; later, from a queue of defer's,
// when that work is still running); at once for a tensor without elements; also when this throws:
// std::invalid_argument for a dtype, device or layout defer cannot hold, DeviceError for a CUDA
// device that is not available. kDLCPU and kDLCUDAHost memory is a CPU tensor, kDLCUDA a CUDA one.
// The producer's work on m must be ordered before defer's current stream by the caller (DLPack's
// C struct carries no stream).
Tensor from_dlpack(DLManagedTensor* m);

// Reads a safetensors file: each tensor on `d`. On the CPU the tensors view a private
// (copy-on-write) memory mapping of the file, kept alive by them and by work queued on them: writes
// through a tensor never change the file; a tensor whose offset is not aligned to its element size
// is copied instead; on CUDA each tensor is one stream-ordered upload on the
// current stream. A file that cannot be read, or that is malformed, truncated or hostile, throws
// defer::Error naming the file and the fault.
std::map<std::string, Tensor> load_safetensors(const std::string& path, Device d = default_device());
// Writes the tensors (any device, any strides) to `path` in the safetensors format, names sorted.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors);

}  // namespace defer
