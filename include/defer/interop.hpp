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
// the current stream of t's device has completed when this returns (see docs/api.md section 12).
// boolean is exported as DLPack's bool type code (6) with 8 bits.
DLManagedTensor* to_dlpack(const Tensor& t);
// A Tensor viewing m's memory (zero copy). Takes ownership of m: its deleter is called exactly once,
// when the last Tensor sharing the memory is gone (also when this throws std::invalid_argument for
// a dtype, device or layout defer cannot hold).
Tensor from_dlpack(DLManagedTensor* m);

// Reads a safetensors file: each tensor on `d`. On the CPU the tensors view a read-only memory
// mapping of the file (kept alive by them); on CUDA each tensor is one stream-ordered upload on the
// current stream. A file that cannot be read, or that is malformed, truncated or hostile, throws
// defer::Error naming the file and the fault.
std::map<std::string, Tensor> load_safetensors(const std::string& path, Device d = default_device());
// Writes the tensors (any device, any strides) to `path` in the safetensors format, names sorted.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors);

}  // namespace defer
