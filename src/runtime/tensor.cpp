// Tensor handles, creation and host copies.
#include <defer/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include <defer/detail/stats_counters.hpp>

#include "dtype_dispatch.hpp"
#include "runtime/backend.hpp"
#include "runtime/copy.hpp"
#include "runtime/tensor_impl.hpp"

namespace defer {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

namespace detail {

int64_t checked_numel(const Shape& shape, DType dtype, const char* op) {
  for (int64_t extent : shape)
    if (extent < 0) throw std::invalid_argument(std::string(op) + ": negative extent in shape " + shape_str(shape));
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;  // whatever the other extents
  int64_t n = 1;
  for (int64_t extent : shape) {
    if (__builtin_mul_overflow(n, extent, &n))
      throw std::invalid_argument(std::string(op) + ": the element count of shape " + shape_str(shape) + " overflows int64");
  }
  int64_t bytes = 0;
  if (__builtin_mul_overflow(n, static_cast<int64_t>(dtype_size(dtype)), &bytes))
    throw std::invalid_argument(std::string(op) + ": the byte size of shape " + shape_str(shape) + " overflows int64");
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t step = 1;
  for (std::size_t d = shape.size(); d-- > 0;) {
    strides[d] = step;
    // Only an empty shape can overflow here (its strides address nothing): keep the last step.
    int64_t next = 0;
    if (!__builtin_mul_overflow(step, shape[d] > 0 ? shape[d] : 1, &next)) step = next;
  }
  return strides;
}

bool is_contiguous(const Shape& shape, const Shape& strides) noexcept {
  // No elements: any strides describe them (and the other extents may multiply past int64).
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return true;
  int64_t step = 1;
  for (std::size_t d = shape.size(); d-- > 0;) {
    if (shape[d] == 1) continue;
    if (strides[d] != step) return false;
    step *= shape[d];
  }
  return true;
}

Tensor allocate_tensor(Shape shape, DType dtype, StreamImpl& stream, const char* op) {
  const int64_t numel = checked_numel(shape, dtype, op);
  auto impl = std::make_shared<TensorImpl>();
  impl->strides = contiguous_strides(shape);
  impl->shape = std::move(shape);
  impl->numel = numel;
  impl->dtype = dtype;
  impl->device = stream.device();
  if (numel > 0) {
    auto& pool = pool_for(stream.device());
    impl->storage = std::make_shared<Allocation>(pool, pool.allocate(impl->nbytes(), stream));
  }
  return Tensor(std::move(impl));
}

Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t storage_offset) {
  const TensorImpl& b = *base.impl();
  return wrap_storage(b.storage, std::move(shape), std::move(strides), storage_offset, b.dtype, b.device);
}

Tensor wrap_storage(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t storage_offset, DType dtype,
                    Device device) {
  auto impl = std::make_shared<TensorImpl>();
  impl->numel = checked_numel(shape, dtype, "view");  // cheap; an empty shape may hold huge extents
  impl->contiguous = is_contiguous(shape, strides);
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->storage_offset = storage_offset;
  impl->dtype = dtype;
  impl->device = device;
  if (impl->numel > 0) impl->storage = std::move(storage);
  return Tensor(std::move(impl));
}

}  // namespace detail

const detail::TensorImpl& Tensor::checked(const char* what) const {
  if (!impl_) throw std::logic_error(std::string("Tensor::") + what + ": the tensor is undefined");
  return *impl_;
}

const Shape& Tensor::shape() const { return checked("shape").shape; }
int64_t Tensor::dim() const { return static_cast<int64_t>(checked("dim").shape.size()); }
int64_t Tensor::numel() const { return checked("numel").numel; }
DType Tensor::dtype() const { return checked("dtype").dtype; }
Device Tensor::device() const { return checked("device").device; }
const Shape& Tensor::strides() const { return checked("strides").strides; }
int64_t Tensor::storage_offset() const { return checked("storage_offset").storage_offset; }
bool Tensor::is_contiguous() const { return checked("is_contiguous").contiguous; }
std::size_t Tensor::nbytes() const { return checked("nbytes").nbytes(); }
const void* Tensor::data_ptr() const { return checked("data_ptr").data(); }
void* Tensor::data_ptr() { return checked("data_ptr").data(); }

Tensor empty(Shape shape, DType dtype, Device device) {
  return detail::allocate_tensor(std::move(shape), dtype, *detail::current_stream_impl(device), "empty");
}

namespace {

// `value` as one element of dtype, in the low bytes: what full() writes.
std::uint64_t element_bits(float value, DType dtype) {
  if (is_integer(dtype)) {
    const double lo = dtype == DType::i32 ? -2147483648.0 : -9223372036854775808.0;
    const double hi = dtype == DType::i32 ? 2147483648.0 : 9223372036854775808.0;
    if (!(value >= lo && value < hi))
      throw std::invalid_argument("full: " + std::to_string(value) + " is not representable as " + dtype_name(dtype));
  }
  return kernels::dispatch(dtype, [&](auto tag) {
    using Tag = decltype(tag);
    const typename Tag::storage element = Tag::store(value);
    std::uint64_t bits = 0;
    std::memcpy(&bits, &element, sizeof element);
    return bits;
  });
}

// Queues a kernel that writes a new tensor of `shape` on the current stream of `device`.
template <class Write>
Tensor created(const char* op, Shape shape, DType dtype, Device device, Write write) {
  auto& stream = *detail::current_stream_impl(device);
  Tensor t = detail::allocate_tensor(std::move(shape), dtype, stream, op);
  if (t.numel() == 0) return t;
  detail::stats_counters().kernel_launches.fetch_add(1, std::memory_order_relaxed);  // a fill is a kernel
  write(detail::backend_for(device), t, stream);
  return t;
}

}  // namespace

Tensor full(Shape shape, float value, DType dtype, Device device) {
  const std::uint64_t bits = element_bits(value, dtype);
  return created("full", std::move(shape), dtype, device, [&](detail::Backend& backend, Tensor& t, detail::StreamImpl& s) {
    backend.fill(t.data_ptr(), t.numel(), dtype_size(dtype), bits, s);
  });
}

Tensor arange(int64_t end, DType dtype, Device device) {
  if (end < 0) throw std::invalid_argument("arange: end must be >= 0, got " + std::to_string(end));
  return created("arange", Shape{end}, dtype, device, [&](detail::Backend& backend, Tensor& t, detail::StreamImpl& s) {
    backend.arange(t.data_ptr(), t.numel(), dtype, s);
  });
}

namespace {

template <class T>
constexpr DType dtype_of() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::int64_t> ||
                    std::is_same_v<T, std::uint8_t>,
                "T must be float, int32_t, int64_t or uint8_t");
  if constexpr (std::is_same_v<T, float>) return DType::f32;
  else if constexpr (std::is_same_v<T, std::int32_t>) return DType::i32;
  else if constexpr (std::is_same_v<T, std::int64_t>) return DType::i64;
  else return DType::boolean;
}

template <class T>
Tensor upload(const std::vector<T>& values, Shape shape, Device device, const char* op) {
  constexpr DType dtype = dtype_of<T>();
  const int64_t numel = detail::checked_numel(shape, dtype, op);
  if (static_cast<int64_t>(values.size()) != numel) {
    throw std::invalid_argument(std::string(op) + ": " + std::to_string(values.size()) + " values do not fill shape " +
                                shape_str(shape) + " (" + std::to_string(numel) + " elements)");
  }
  auto& stream = *detail::current_stream_impl(device);
  Tensor t = detail::allocate_tensor(std::move(shape), dtype, stream, op);
  if (numel == 0) return t;
  auto bytes = std::make_shared<std::vector<unsigned char>>(t.nbytes());
  std::memcpy(bytes->data(), values.data(), bytes->size());
  if constexpr (dtype == DType::boolean)
    for (unsigned char& b : *bytes) b = b != 0;  // a boolean is 0 or 1
  detail::copy_from_host_async(t.data_ptr(), std::move(bytes), stream);
  return t;
}

// Copies t to the host on the current stream of its device and waits for it (and so for every
// earlier piece of work queued on that stream).
void download(const Tensor& t, void* out, const char* op) {
  if (!t.defined()) throw std::invalid_argument(std::string(op) + ": the tensor is undefined");
  auto& stream = *detail::current_stream_impl(t.device());
  const Tensor dense = detail::contiguous_copy(t, stream);  // any strides gathered on the device first
  detail::copy_async(out, dense.data_ptr(), dense.nbytes(), stream);
  stream.synchronize();
}

}  // namespace

Tensor from_vector(const std::vector<float>& values, Shape shape, Device device) {
  return upload(values, std::move(shape), device, "from_vector");
}

template <class T>
Tensor from_host(const std::vector<T>& values, Shape shape, Device device) {
  return upload(values, std::move(shape), device, "from_host");
}
template Tensor from_host<float>(const std::vector<float>&, Shape, Device);
template Tensor from_host<std::int32_t>(const std::vector<std::int32_t>&, Shape, Device);
template Tensor from_host<std::int64_t>(const std::vector<std::int64_t>&, Shape, Device);
template Tensor from_host<std::uint8_t>(const std::vector<std::uint8_t>&, Shape, Device);

std::vector<float> to_vector(const Tensor& t) {
  if (!t.defined()) throw std::invalid_argument("to_vector: the tensor is undefined");
  std::vector<unsigned char> bytes(t.nbytes());
  download(t, bytes.data(), "to_vector");
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  kernels::dispatch(t.dtype(), [&](auto tag) {
    using Tag = decltype(tag);
    using Storage = typename Tag::storage;
    for (std::size_t i = 0; i < out.size(); ++i) {
      Storage v;
      std::memcpy(&v, bytes.data() + i * sizeof(Storage), sizeof(Storage));
      if constexpr (is_integer(Tag::dtype)) out[i] = static_cast<float>(v);  // rounded once
      else out[i] = Tag::load(v);
    }
  });
  return out;
}

template <class T>
std::vector<T> to_host(const Tensor& t) {
  if (t.defined() && t.dtype() != dtype_of<T>()) {
    throw std::invalid_argument(std::string("to_host: the tensor is ") + dtype_name(t.dtype()) + ", not " +
                                dtype_name(dtype_of<T>()));
  }
  std::vector<T> out(t.defined() ? static_cast<std::size_t>(t.numel()) : 0);
  download(t, out.data(), "to_host");
  return out;
}
template std::vector<float> to_host<float>(const Tensor&);
template std::vector<std::int32_t> to_host<std::int32_t>(const Tensor&);
template std::vector<std::int64_t> to_host<std::int64_t>(const Tensor&);
template std::vector<std::uint8_t> to_host<std::uint8_t>(const Tensor&);

void record_stream(const Tensor& t, const Stream& s) {
  if (!t.defined()) throw std::invalid_argument("record_stream: the tensor is undefined");
  if (!(s.device() == t.device()))
    throw std::invalid_argument("record_stream: the tensor is on " + t.device().str() + ", the stream on " + s.device().str());
  if (t.impl()->storage) t.impl()->storage->record_use(s.impl());
}

}  // namespace defer
