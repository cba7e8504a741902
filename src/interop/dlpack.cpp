// DLPack interop (docs/api.md section 12): to_dlpack and from_dlpack, both zero copy. A DLPack tensor
// and a defer Tensor are the same thing, a view (shape, strides in elements, first element) of memory
// someone owns, so each direction only translates the description and ties the owners' lifetimes.
#include <defer/interop.hpp>

#include <defer/errors.hpp>

#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "runtime/cpu/cpu_stream.hpp"
#include "runtime/storage.hpp"
#include "runtime/stream_impl.hpp"
#include "runtime/tensor_impl.hpp"

namespace defer {
namespace {

// DLPack's bool type code: kDLBool from DLPack 0.8 on; older headers (Debian's 0.6) lack the name,
// and consumers (PyTorch: torch.bool) know the value, so it is exported either way.
constexpr std::uint8_t kBoolCode = 6;
#if defined(DLPACK_MAJOR_VERSION) || (defined(DLPACK_VERSION) && DLPACK_VERSION >= 80)
static_assert(kDLBool == kBoolCode, "DLPack's bool code changed");
#endif
static_assert(detail::info(DType::boolean).dlpack_code == kBoolCode && detail::info(DType::boolean).dlpack_bits == 8,
              "boolean must be exported as DLPack bool, 8 bits");

// ---- to_dlpack ------------------------------------------------------------------------------------

// What an exported DLManagedTensor owns (its manager_ctx): a Tensor sharing the storage, which keeps
// the memory alive, and the shape and strides arrays its DLTensor points to.
struct Exported {
  DLManagedTensor managed{};
  Tensor tensor;
  Shape shape, strides;
};

void delete_exported(DLManagedTensor* m) { delete static_cast<Exported*>(m->manager_ctx); }

// ---- from_dlpack ----------------------------------------------------------------------------------

void call_deleter(DLManagedTensor* m) noexcept {
  if (m->deleter != nullptr) m->deleter(m);  // DLPack allows a null deleter: nothing to release
}

// Owns an imported DLManagedTensor until its storage takes it over, so that every error path calls
// its deleter exactly once.
class Imported {
 public:
  explicit Imported(DLManagedTensor* m) noexcept : m_(m) {}
  ~Imported() {
    if (m_ != nullptr) call_deleter(m_);
  }
  Imported(const Imported&) = delete;
  Imported& operator=(const Imported&) = delete;
  const DLTensor& dl() const noexcept { return m_->dl_tensor; }
  DLManagedTensor* release() noexcept { return std::exchange(m_, nullptr); }

 private:
  DLManagedTensor* m_;
};

std::string code_str(const DLDataType& t) {
  return "(code " + std::to_string(t.code) + ", bits " + std::to_string(t.bits) + ", lanes " + std::to_string(t.lanes) +
         ")";
}

DType dtype_from(const DLDataType& t) {
  if (t.lanes != 1) {
    throw std::invalid_argument("from_dlpack: dtype.lanes is " + std::to_string(t.lanes) + " " + code_str(t) +
                                "; defer holds scalar elements only (lanes 1)");
  }
  for (std::size_t i = 0; i < detail::kDTypeCount; ++i) {
    if (detail::kDTypes[i].dlpack_code == t.code && detail::kDTypes[i].dlpack_bits == t.bits) return static_cast<DType>(i);
  }
  if (t.code == kDLUInt && t.bits == 8) {
    throw std::invalid_argument("from_dlpack: dtype is uint8 " + code_str(t) +
                                ", which defer has no dtype for; boolean is DLPack's bool (code 6, bits 8)");
  }
  throw std::invalid_argument("from_dlpack: dtype " + code_str(t) +
                              " has no defer dtype (float 32/16, bfloat 16, int 32/64, bool 8)");
}

// kDLCUDAHost (pinned host memory) is host memory to the CPU: a CPU tensor. kDLCUDAManaged is not
// taken: its pages move between host and device, and defer could not tell which device's work must
// be ordered with it.
Device device_from(const DLDevice& d) {
  // Read as the integer it is: a producer with a newer header may send a type beyond the range of
  // this header's enum, and loading that as the enum is undefined behaviour.
  std::underlying_type_t<DLDeviceType> raw;
  std::memcpy(&raw, &d.device_type, sizeof raw);
  const auto type = static_cast<int>(raw);
  if (type == kDLCPU || type == kDLCUDAHost) return Device::cpu();
  if (type == kDLCUDA) {
    if (d.device_id < 0)
      throw std::invalid_argument("from_dlpack: device.device_id is " + std::to_string(d.device_id) + " for kDLCUDA");
    const Device device = Device::cuda(d.device_id);  // DeviceError: cannot exist on this machine
    detail::require_available(device);                // DeviceError: no GPU, or a build without CUDA
    return device;
  }
  throw std::invalid_argument("from_dlpack: device.device_type " + std::to_string(type) +
                              (type == kDLCUDAManaged ? " (kDLCUDAManaged)" : "") +
                              " is not one defer takes (kDLCPU 1, kDLCUDA 2, kDLCUDAHost 3)");
}

// The elements a DLTensor reaches, in elements from its first element: [lowest, highest].
struct Reach {
  int64_t lowest = 0, highest = 0;
};

Reach reach_of(const Shape& shape, const Shape& strides) {
  Reach r;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] <= 1) continue;  // one element (or none): the stride is never applied
    int64_t span = 0;
    int64_t& end = strides[d] < 0 ? r.lowest : r.highest;
    if (__builtin_mul_overflow(shape[d] - 1, strides[d], &span) || __builtin_add_overflow(end, span, &end))
      throw std::invalid_argument("from_dlpack: shape " + shape_str(shape) + " with strides " + shape_str(strides) +
                                  " reaches beyond int64 elements");
  }
  return r;
}

}  // namespace

DLManagedTensor* to_dlpack(const Tensor& t) {
  if (!t.defined()) throw std::invalid_argument("to_dlpack: the tensor is undefined");
  // The consumer reads the memory right away, on the host or on streams we know nothing of: finish
  // the work queued on the current stream of t's device, which is where t was produced unless the
  // caller produced it elsewhere (docs/api.md section 12). This blocks the host.
  detail::current_stream_impl(t.device())->synchronize();

  auto exported = std::make_unique<Exported>();
  exported->tensor = t;
  exported->shape = t.shape();
  exported->strides = t.strides();
  const detail::DTypeInfo& info = detail::info(t.dtype());
  DLTensor& dl = exported->managed.dl_tensor;
  // data is the first element and byte_offset 0: what every consumer reads the same way (some
  // older ones ignore byte_offset).
  dl.data = exported->tensor.data_ptr();
  dl.device.device_type = t.device().is_cuda() ? kDLCUDA : kDLCPU;
  dl.device.device_id = t.device().index();
  dl.ndim = static_cast<int>(t.dim());
  dl.dtype.code = info.dlpack_code;
  dl.dtype.bits = info.dlpack_bits;
  dl.dtype.lanes = 1;
  dl.shape = exported->shape.data();
  dl.strides = exported->strides.data();  // always given: any strides, even for a contiguous tensor
  dl.byte_offset = 0;
  exported->managed.manager_ctx = exported.get();
  exported->managed.deleter = delete_exported;
  return &exported.release()->managed;
}

Tensor from_dlpack(DLManagedTensor* m) {
  if (m == nullptr) throw std::invalid_argument("from_dlpack: the DLManagedTensor is null");
  Imported owned(m);  // from here on, every throw calls the deleter once
  const DLTensor& dl = owned.dl();
  const DType dtype = dtype_from(dl.dtype);
  const Device device = device_from(dl.device);
  if (dl.ndim < 0) throw std::invalid_argument("from_dlpack: ndim is " + std::to_string(dl.ndim));
  if (dl.ndim > 0 && dl.shape == nullptr)
    throw std::invalid_argument("from_dlpack: shape is null for ndim " + std::to_string(dl.ndim));
  const auto ndim = static_cast<std::size_t>(dl.ndim);
  Shape shape(ndim);
  for (std::size_t d = 0; d < ndim; ++d) shape[d] = dl.shape[d];
  const int64_t numel = detail::checked_numel(shape, dtype, "from_dlpack");
  Shape strides = detail::contiguous_strides(shape);  // strides NULL: compact, row-major
  if (dl.strides != nullptr)
    for (std::size_t d = 0; d < ndim; ++d) strides[d] = dl.strides[d];

  if (numel == 0) {
    // Nothing to view: the tensor holds no memory, and `owned` calls the deleter on return.
    return detail::wrap_storage(nullptr, std::move(shape), std::move(strides), 0, dtype, device);
  }
  if (dl.data == nullptr)
    throw std::invalid_argument("from_dlpack: data is null for a tensor of shape " + shape_str(shape));
  const auto esize = static_cast<int64_t>(dtype_size(dtype));
  char* first = static_cast<char*>(dl.data) + dl.byte_offset;
  if (reinterpret_cast<std::uintptr_t>(first) % static_cast<std::uintptr_t>(esize) != 0) {
    throw std::invalid_argument("from_dlpack: the first element (data + byte_offset " + std::to_string(dl.byte_offset) +
                                ") is not aligned to the " + std::to_string(esize) + "-byte elements of " +
                                dtype_name(dtype));
  }
  const Reach reach = reach_of(shape, strides);
  int64_t nbytes = 0;
  if (__builtin_sub_overflow(reach.highest, reach.lowest, &nbytes) || __builtin_add_overflow(nbytes, 1, &nbytes) ||
      __builtin_mul_overflow(nbytes, esize, &nbytes))
    throw std::invalid_argument("from_dlpack: shape " + shape_str(shape) + " with strides " + shape_str(strides) +
                                " spans more than int64 bytes");
  // The storage starts at the lowest address the view reaches (negative strides reach below the
  // first element), so that storage_offset puts data_ptr() on the first element.
  char* base = first + reach.lowest * esize;
  // The deleter hands the memory back to the producer: it runs once the last Tensor viewing it is
  // gone and the work defer queued on it has finished (runtime/storage.hpp).
  auto storage = std::make_shared<detail::ExternalStorage>(base, static_cast<std::size_t>(nbytes),
                                                           [m] { call_deleter(m); }, detail::current_stream_impl(device));
  owned.release();  // the storage calls the deleter from now on
  return detail::wrap_storage(std::move(storage), std::move(shape), std::move(strides), -reach.lowest, dtype, device);
}

}  // namespace defer
