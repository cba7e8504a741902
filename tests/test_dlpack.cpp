// DLPack interop (docs/api.md section 12): to_dlpack and from_dlpack for every dtype on both devices,
// any strides (transposed, sliced with an offset, negative, zero), zero copy both ways, the deleter
// called exactly once (when the last sharer is gone, and on every error path), and the stream rules.
// CUDA cases skip themselves without a GPU. The round trip with PyTorch is tests/python/test_dlpack_torch.py.
#include <gtest/gtest.h>

#include <dlpack/dlpack.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <defer/defer.hpp>
#include <defer/interop.hpp>

#include "runtime/backend.hpp"
#include "runtime/tensor_impl.hpp"
#include "test_util.hpp"
#ifdef DEFER_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

using namespace defer;
using namespace defer::testing;
using Clock = std::chrono::steady_clock;

namespace {

constexpr DType kAllDtypes[] = {DType::f32, DType::i32, DType::f16, DType::bf16, DType::i64, DType::boolean};

// Element o of the tensors these tests make: a small integer, exact in every dtype (true when
// nonzero in a boolean), so that a wrong offset shows up as a wrong value.
float value_at(int64_t o, DType dt) {
  const auto v = static_cast<float>(o % 13);
  return dt == DType::boolean ? (v != 0.f ? 1.f : 0.f) : v;
}

// A contiguous tensor of n elements of dt on d, element o = value_at(o, dt).
Tensor counting(int64_t n, DType dt, Device d) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = static_cast<float>(i % 13);
  return wait(to(from_vector(v, {n}, d), dt));
}

// What to_vector of a view of a counting() tensor must give: its elements in row-major order.
std::vector<float> expected_view(const Shape& shape, const Shape& strides, int64_t offset, DType dt) {
  int64_t n = 1;
  for (int64_t e : shape) n *= e;
  std::vector<float> out;
  Shape index(shape.size(), 0);
  for (int64_t k = 0; k < n; ++k) {
    int64_t o = offset;
    for (std::size_t d = 0; d < shape.size(); ++d) o += index[d] * strides[d];
    out.push_back(value_at(o, dt));
    for (std::size_t d = shape.size(); d-- > 0;) {
      if (++index[d] < shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

// A DLManagedTensor made by hand, as a foreign producer would: it views memory kept alive by `keep`
// and counts the calls of its deleter.
struct Foreign {
  DLManagedTensor managed{};
  std::shared_ptr<void> keep;
  Shape shape, strides;
  std::atomic<int>* deleted;
};

void delete_foreign(DLManagedTensor* m) {
  auto* f = static_cast<Foreign*>(m->manager_ctx);
  f->deleted->fetch_add(1);
  delete f;
}

DLManagedTensor* foreign(std::shared_ptr<void> keep, void* data, std::uint64_t byte_offset, DLDevice device,
                         DLDataType dtype, Shape shape, std::optional<Shape> strides, std::atomic<int>* deleted) {
  auto* f = new Foreign;
  f->keep = std::move(keep);
  f->shape = std::move(shape);
  f->deleted = deleted;
  DLTensor& dl = f->managed.dl_tensor;
  dl.data = data;
  dl.byte_offset = byte_offset;
  dl.device = device;
  dl.dtype = dtype;
  dl.ndim = static_cast<int>(f->shape.size());
  dl.shape = f->shape.data();
  if (strides) {
    f->strides = *strides;
    dl.strides = f->strides.data();
  }
  f->managed.manager_ctx = f;
  f->managed.deleter = delete_foreign;
  return &f->managed;
}

DLDevice dl_device(Device d) {
  DLDevice out;
  out.device_type = d.is_cuda() ? kDLCUDA : kDLCPU;
  out.device_id = d.index();
  return out;
}

DLDataType dl_dtype(DType dt) {
  DLDataType t;
  t.code = detail::info(dt).dlpack_code;
  t.bits = detail::info(dt).dlpack_bits;
  t.lanes = 1;
  return t;
}

// A foreign view into a counting() tensor's memory: the first element at element `first_offset`.
DLManagedTensor* foreign_view(const Tensor& memory, int64_t first_offset, Shape shape, std::optional<Shape> strides,
                              std::atomic<int>* deleted) {
  const auto keep = std::make_shared<Tensor>(memory);
  return foreign(keep, keep->data_ptr(), static_cast<std::uint64_t>(first_offset) * dtype_size(memory.dtype()),
                 dl_device(memory.device()), dl_dtype(memory.dtype()), std::move(shape), std::move(strides), deleted);
}

const char* kind_name(DeviceKind k) { return k == DeviceKind::cuda ? "cuda" : "cpu"; }

// Polls `done` for up to 5 s: for work that finishes on another thread.
bool eventually(const std::function<bool()>& done) {
  const auto t0 = Clock::now();
  while (!done()) {
    if (seconds_since(t0) > 5.0) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

}  // namespace

// The codes are spelled out here rather than read from the dtype table, so that a wrong row fails.
TEST(DLPack, DtypesExportTheirDLPackCodesAndBooleanIsBoolCodeSixWithEightBits) {
  struct Row {
    DType dtype;
    int code, bits;
  };
  const Row rows[] = {{DType::f32, 2, 32}, {DType::i32, 0, 32}, {DType::f16, 2, 16},
                      {DType::bf16, 4, 16}, {DType::i64, 0, 64}, {DType::boolean, 6, 8}};
  for (const Row& r : rows) {
    SCOPED_TRACE(dtype_name(r.dtype));
    DLManagedTensor* m = to_dlpack(counting(3, r.dtype, Device::cpu()));
    EXPECT_EQ(m->dl_tensor.dtype.code, r.code);
    EXPECT_EQ(m->dl_tensor.dtype.bits, r.bits);
    EXPECT_EQ(m->dl_tensor.dtype.lanes, 1);
    m->deleter(m);
  }
}

class DLPackDevices : public ::testing::TestWithParam<DeviceKind> {
 protected:
  void SetUp() override {
    if (GetParam() == DeviceKind::cuda && !cuda_available()) GTEST_SKIP() << "no CUDA device";
    dev_ = GetParam() == DeviceKind::cuda ? Device::cuda(0) : Device::cpu();
  }
  Device dev_ = Device::cpu();
};

TEST_P(DLPackDevices, EveryDtypeRoundTripsWithTheSameDataPointerAndValues) {
  for (DType dt : kAllDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor t = detail::make_view(counting(12, dt, dev_), {3, 4}, {4, 1}, 0);
    DLManagedTensor* m = to_dlpack(t);
    const DLTensor& dl = m->dl_tensor;
    EXPECT_EQ(dl.data, t.data_ptr());
    EXPECT_EQ(dl.byte_offset, 0u);
    EXPECT_EQ(dl.device.device_type, dev_.is_cuda() ? kDLCUDA : kDLCPU);
    EXPECT_EQ(dl.device.device_id, dev_.index());
    ASSERT_EQ(dl.ndim, 2);
    EXPECT_EQ(Shape(dl.shape, dl.shape + 2), (Shape{3, 4}));
    ASSERT_NE(dl.strides, nullptr);
    EXPECT_EQ(Shape(dl.strides, dl.strides + 2), (Shape{4, 1}));

    const Tensor back = from_dlpack(m);
    EXPECT_EQ(back.data_ptr(), t.data_ptr()) << "a copy was made";
    EXPECT_EQ(back.dtype(), dt);
    EXPECT_EQ(back.device(), dev_);
    EXPECT_EQ(back.shape(), t.shape());
    EXPECT_EQ(back.strides(), t.strides());
    EXPECT_TRUE(back.is_contiguous());
    EXPECT_EQ(to_vector(back), expected_view({3, 4}, {4, 1}, 0, dt));
  }
}

TEST_P(DLPackDevices, ZeroDimAndEmptyTensorsRoundTrip) {
  const Tensor scalar = detail::make_view(counting(5, DType::f32, dev_), {}, {}, 3);
  const Tensor back = from_dlpack(to_dlpack(scalar));
  EXPECT_EQ(back.dim(), 0);
  EXPECT_EQ(back.data_ptr(), scalar.data_ptr());
  EXPECT_EQ(to_vector(back), std::vector<float>{3.f});

  const Tensor none = empty({2, 0, 3}, DType::i64, dev_);
  const Tensor none_back = from_dlpack(to_dlpack(none));
  EXPECT_EQ(none_back.shape(), (Shape{2, 0, 3}));
  EXPECT_EQ(none_back.numel(), 0);
  EXPECT_TRUE(to_vector(none_back).empty());
}

// Views made by defer (transposed, sliced with an offset, broadcast) export their strides and first
// element as they are, and import back to the same view.
TEST_P(DLPackDevices, StridedViewsExportTheirStridesAndFirstElement) {
  struct View {
    const char* name;
    Shape shape, strides;
    int64_t offset;
  };
  const View views[] = {
      {"transposed", {6, 4}, {1, 6}, 0},
      {"sliced with an offset", {2, 3}, {12, 2}, 7},
      {"broadcast (stride 0)", {3, 4}, {0, 1}, 2},
      {"permuted 3-d", {2, 3, 4}, {1, 8, 2}, 0},
  };
  for (DType dt : kAllDtypes) {
    const Tensor base = counting(24, dt, dev_);
    for (const View& v : views) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + ", " + v.name);
      const Tensor view = detail::make_view(base, v.shape, v.strides, v.offset);
      DLManagedTensor* m = to_dlpack(view);
      EXPECT_EQ(m->dl_tensor.data, view.data_ptr());
      EXPECT_EQ(static_cast<const char*>(m->dl_tensor.data),
                static_cast<const char*>(base.data_ptr()) + v.offset * static_cast<int64_t>(dtype_size(dt)));
      EXPECT_EQ(Shape(m->dl_tensor.strides, m->dl_tensor.strides + v.strides.size()), v.strides);
      const Tensor back = from_dlpack(m);
      EXPECT_EQ(back.data_ptr(), view.data_ptr());
      EXPECT_EQ(back.strides(), v.strides);
      EXPECT_EQ(to_vector(back), expected_view(v.shape, v.strides, v.offset, dt));
      EXPECT_EQ(to_vector(back), to_vector(view));
    }
  }
}

// DLManagedTensors made by hand, as another framework would: strides NULL (compact), transposed,
// sliced with a byte_offset, negative strides (the first element above the lowest address) and zero
// strides. Each reads correctly, views the very same memory, and calls its deleter once.
TEST_P(DLPackDevices, ForeignStridedTensorsImportInPlace) {
  struct Case {
    const char* name;
    int64_t first;  // element offset of the first element in the memory
    Shape shape;
    std::optional<Shape> strides;
    int64_t lowest;  // the lowest element offset the view reaches
  };
  const Case cases[] = {
      {"strides NULL", 0, {2, 5}, std::nullopt, 0},
      {"transposed", 0, {5, 4}, Shape{1, 5}, 0},
      {"sliced with an offset", 3, {3, 2}, Shape{10, 3}, 3},
      {"reversed (stride -1)", 39, {40}, Shape{-1}, 0},
      {"rows reversed", 30, {4, 5}, Shape{-10, 1}, 0},
      {"both reversed, offset", 38, {3, 4}, Shape{-9, -2}, 38 - 18 - 6},
      {"broadcast (stride 0)", 2, {3, 5}, Shape{0, 1}, 2},
      {"broadcast and reversed", 20, {2, 3}, Shape{0, -2}, 16},
      {"0-d", 7, {}, Shape{}, 7},
      {"extent 1 with a huge stride", 4, {1, 3}, Shape{int64_t{1} << 62, 1}, 4},
  };
  for (DType dt : kAllDtypes) {
    const Tensor memory = counting(40, dt, dev_);
    const auto esize = static_cast<int64_t>(dtype_size(dt));
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + ", " + c.name);
      std::atomic<int> deleted{0};
      {
        const Tensor t = from_dlpack(foreign_view(memory, c.first, c.shape, c.strides, &deleted));
        const Shape strides = c.strides ? *c.strides : detail::contiguous_strides(c.shape);
        EXPECT_EQ(t.shape(), c.shape);
        EXPECT_EQ(t.strides(), strides);
        EXPECT_EQ(t.dtype(), dt);
        EXPECT_EQ(t.device(), dev_);
        EXPECT_EQ(static_cast<const char*>(t.data_ptr()), static_cast<const char*>(memory.data_ptr()) + c.first * esize)
            << "data_ptr() must be the first element";
        EXPECT_EQ(t.storage_offset(), c.first - c.lowest) << "the storage starts at the lowest address reached";
        const std::vector<float> want = expected_view(c.shape, strides, c.first, dt);
        EXPECT_EQ(to_vector(t), want);
        if (dt == DType::f32 && !c.shape.empty()) {
          // Kernels read the negative and zero strides in place: an element-wise op, a reduction.
          std::vector<float> negated(want.size()), row_sums;
          for (std::size_t i = 0; i < want.size(); ++i) negated[i] = -want[i];
          const auto row = static_cast<std::size_t>(c.shape.back());
          for (std::size_t r = 0; row > 0 && r < want.size() / row; ++r) {
            float total = 0;
            for (std::size_t j = 0; j < row; ++j) total += want[r * row + j];  // small integers: exact
            row_sums.push_back(total);
          }
          EXPECT_EQ(to_vector(wait(neg(t))), negated);
          EXPECT_EQ(to_vector(wait(sum(t, -1))), row_sums);
        }
        EXPECT_EQ(deleted.load(), 0);
      }
      EXPECT_EQ(deleted.load(), 1);
    }
  }
}

// Zero copy both ways: what is written through the DLPack pointer is what defer reads, and what a
// defer kernel writes into imported memory is what its owner reads.
TEST_P(DLPackDevices, WritesAreSeenBothWays) {
  const Tensor t = from_vector({1.f, 2.f, 3.f, 4.f}, {4}, dev_);
  DLManagedTensor* m = to_dlpack(t);
  const std::vector<float> written{10.f, 20.f, 30.f, 40.f};
  if (dev_.is_cuda()) {
#ifdef DEFER_HAVE_CUDA
    ASSERT_EQ(cudaMemcpy(m->dl_tensor.data, written.data(), 16, cudaMemcpyHostToDevice), cudaSuccess);
    // From pageable memory the copy may still be in flight, on the legacy stream, which defer's
    // streams do not wait for: the writer orders itself before the reader.
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
#endif
  } else {
    std::memcpy(m->dl_tensor.data, written.data(), 16);
  }
  EXPECT_EQ(to_vector(t), written);
  EXPECT_EQ(to_vector(wait(add(t, 1.f))), (std::vector<float>{11.f, 21.f, 31.f, 41.f}));
  m->deleter(m);

  // The other way: a defer kernel (the backend's fill) writes into memory a producer owns.
  const Tensor owner = from_vector({0.f, 0.f, 0.f}, {3}, dev_);
  current_stream(dev_).synchronize();
  std::atomic<int> deleted{0};
  {
    Tensor imported = from_dlpack(foreign_view(owner, 0, {3}, std::nullopt, &deleted));
    const float value = 2.5f;
    std::uint32_t bits = 0;
    std::memcpy(&bits, &value, sizeof bits);
    detail::backend_for(dev_).fill(imported.data_ptr(), 3, sizeof(float), bits, *detail::current_stream_impl(dev_));
  }
  EXPECT_EQ(to_vector(owner), (std::vector<float>{2.5f, 2.5f, 2.5f}));
  EXPECT_TRUE(eventually([&] { return deleted.load() == 1; })) << "the deleter ran " << deleted.load() << " times";
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(deleted.load(), 1);
}

INSTANTIATE_TEST_SUITE_P(Devices, DLPackDevices, ::testing::Values(DeviceKind::cpu, DeviceKind::cuda),
                         [](const ::testing::TestParamInfo<DeviceKind>& p) { return std::string(kind_name(p.param)); });

// The deleter runs once, when the last sharer is gone: copies of the Tensor, views of it, an Await
// holding it, and a DLPack export of it all keep the memory.
TEST(DLPack, TheDeleterRunsOnceWhenTheLastSharerIsGone) {
  const Tensor memory = counting(12, DType::f32, Device::cpu());
  std::atomic<int> deleted{0};
  auto t = std::make_optional(from_dlpack(foreign_view(memory, 0, {3, 4}, std::nullopt, &deleted)));
  auto copy = std::make_optional(*t);
  auto view = std::make_optional(detail::make_view(*t, {4, 3}, {1, 4}, 0));
  auto held = std::make_optional(Await<Tensor>(*t));
  auto result = std::make_optional(wait(add(*view, 1.f)));  // a new tensor: shares nothing
  DLManagedTensor* exported = to_dlpack(*view);

  t.reset();
  copy.reset();
  result.reset();
  EXPECT_EQ(deleted.load(), 0);
  view.reset();
  held.reset();
  EXPECT_EQ(deleted.load(), 0) << "the export still shares the memory";
  {
    const Tensor reimported = from_dlpack(exported);  // an export of an import: still the same memory
    EXPECT_EQ(reimported.data_ptr(), memory.data_ptr());
    EXPECT_EQ(to_vector(reimported), expected_view({4, 3}, {1, 4}, 0, DType::f32));
    EXPECT_EQ(deleted.load(), 0);
  }
  EXPECT_EQ(deleted.load(), 1);
}

TEST(DLPack, TheDeleterRunsWhenAnExportIsReleased) {
  const Tensor memory = counting(6, DType::i64, Device::cpu());
  std::atomic<int> deleted{0};
  DLManagedTensor* exported = nullptr;
  {
    const Tensor t = from_dlpack(foreign_view(memory, 0, {6}, std::nullopt, &deleted));
    exported = to_dlpack(t);
  }
  EXPECT_EQ(deleted.load(), 0);
  exported->deleter(exported);
  EXPECT_EQ(deleted.load(), 1);
}

TEST(DLPack, ExportsKeepDeferMemoryAliveUntilTheirDeleter) {
  const MemoryStats before = memory_stats(Device::cpu());
  DLManagedTensor* m = to_dlpack(from_vector(std::vector<float>(1000, 7.f), {1000}, Device::cpu()));
  EXPECT_GE(memory_stats(Device::cpu()).allocated_bytes, before.allocated_bytes + 4000);
  const std::vector<float> seen(static_cast<const float*>(m->dl_tensor.data), static_cast<const float*>(m->dl_tensor.data) + 1000);
  EXPECT_EQ(seen, std::vector<float>(1000, 7.f));
  m->deleter(m);
  EXPECT_EQ(memory_stats(Device::cpu()).allocated_bytes, before.allocated_bytes);
}

// Every rejected DLManagedTensor: the contract's exception, a message naming from_dlpack and the
// field, and the deleter called exactly once before the throw reaches the caller.
TEST(DLPack, EveryErrorPathCallsTheDeleterOnce) {
  enum class Throws { invalid_argument, device_error };
  struct Row {
    const char* name;
    std::function<void(DLTensor&)> spoil;
    Throws throws;
    std::vector<std::string> message_parts;
  };
  auto dtype = [](int code, int bits, int lanes) {
    return [=](DLTensor& dl) {
      dl.dtype.code = static_cast<std::uint8_t>(code);
      dl.dtype.bits = static_cast<std::uint8_t>(bits);
      dl.dtype.lanes = static_cast<std::uint16_t>(lanes);
    };
  };
  auto device = [](int type, int id) {
    return [=](DLTensor& dl) {
      // As raw bytes: 99 is beyond the range of the header's enum.
      const auto raw = static_cast<std::underlying_type_t<DLDeviceType>>(type);
      std::memcpy(&dl.device.device_type, &raw, sizeof raw);
      dl.device.device_id = id;
    };
  };
  const Row rows[] = {
      {"float64", dtype(2, 64, 1), Throws::invalid_argument, {"from_dlpack", "dtype", "code 2, bits 64"}},
      {"int8", dtype(0, 8, 1), Throws::invalid_argument, {"from_dlpack", "dtype", "code 0, bits 8"}},
      {"uint8 is not boolean", dtype(1, 8, 1), Throws::invalid_argument, {"from_dlpack", "uint8", "bool"}},
      {"complex64", dtype(5, 64, 1), Throws::invalid_argument, {"from_dlpack", "dtype"}},
      {"lanes 4", dtype(2, 32, 4), Throws::invalid_argument, {"from_dlpack", "lanes", "4"}},
      {"OpenCL device", device(kDLOpenCL, 0), Throws::invalid_argument, {"from_dlpack", "device_type", "4"}},
      {"managed memory", device(kDLCUDAManaged, 0), Throws::invalid_argument, {"from_dlpack", "kDLCUDAManaged"}},
      {"unknown device type", device(99, 0), Throws::invalid_argument, {"from_dlpack", "device_type", "99"}},
      {"negative CUDA device id", device(kDLCUDA, -1), Throws::invalid_argument, {"from_dlpack", "device_id", "-1"}},
      {"CUDA device that is not there", device(kDLCUDA, cuda_device_count()), Throws::device_error,
       {"cuda:" + std::to_string(cuda_device_count()), "not available"}},
      {"negative ndim", [](DLTensor& dl) { dl.ndim = -1; }, Throws::invalid_argument, {"from_dlpack", "ndim", "-1"}},
      {"null shape", [](DLTensor& dl) { dl.shape = nullptr; }, Throws::invalid_argument, {"from_dlpack", "shape", "null"}},
      {"negative extent", [](DLTensor& dl) { dl.shape[0] = -2; }, Throws::invalid_argument,
       {"from_dlpack", "negative extent", "[-2, 4]"}},
      {"null data", [](DLTensor& dl) { dl.data = nullptr; }, Throws::invalid_argument, {"from_dlpack", "data", "null"}},
      {"misaligned first element", [](DLTensor& dl) { dl.byte_offset = 2; }, Throws::invalid_argument,
       {"from_dlpack", "byte_offset 2", "aligned"}},
      {"strides beyond int64", [](DLTensor& dl) { dl.strides[0] = int64_t{1} << 62; }, Throws::invalid_argument,
       {"from_dlpack", "strides", "int64"}},
  };
  const Tensor memory = counting(12, DType::f32, Device::cpu());
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    std::atomic<int> deleted{0};
    DLManagedTensor* m = foreign_view(memory, 0, {3, 4}, Shape{4, 1}, &deleted);
    row.spoil(m->dl_tensor);
    std::string message;
    bool right_type = false;
    try {
      (void)from_dlpack(m);
    } catch (const DeviceError& e) {
      right_type = row.throws == Throws::device_error;
      message = e.what();
    } catch (const std::invalid_argument& e) {
      right_type = row.throws == Throws::invalid_argument;
      message = e.what();
    } catch (const std::exception& e) {
      message = std::string("unexpected exception: ") + e.what();
    }
    EXPECT_TRUE(right_type) << "message: '" << message << "'";
    for (const std::string& part : row.message_parts) EXPECT_NE(message.find(part), std::string::npos) << message;
    EXPECT_EQ(deleted.load(), 1) << "the deleter must run exactly once on an error";
  }
  // The runtime is untouched by all that.
  EXPECT_EQ(to_vector(memory), expected_view({12}, {1}, 0, DType::f32));
}

TEST(DLPack, NullAndUndefinedAreInvalidArguments) {
  EXPECT_THROW((void)from_dlpack(nullptr), std::invalid_argument);
  EXPECT_THROW((void)to_dlpack(Tensor()), std::invalid_argument);
  try {
    (void)from_dlpack(nullptr);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("from_dlpack"), std::string::npos) << e.what();
  }
}

TEST(DLPack, ANullDeleterIsAllowed) {
  const Tensor memory = counting(4, DType::f32, Device::cpu());
  std::atomic<int> deleted{0};
  DLManagedTensor* m = foreign_view(memory, 0, {4}, std::nullopt, &deleted);
  auto* owner = static_cast<Foreign*>(m->manager_ctx);
  m->deleter = nullptr;  // DLPack: the producer has nothing to release
  {
    const Tensor t = from_dlpack(m);
    EXPECT_EQ(to_vector(t), expected_view({4}, {1}, 0, DType::f32));
  }
  EXPECT_EQ(deleted.load(), 0);
  delete owner;
}

TEST(DLPack, ATensorWithoutElementsCallsTheDeleterAtOnce) {
  std::atomic<int> deleted{0};
  const Tensor t = from_dlpack(foreign(nullptr, nullptr, 0, dl_device(Device::cpu()), dl_dtype(DType::f16), {3, 0},
                                       std::nullopt, &deleted));
  EXPECT_EQ(t.shape(), (Shape{3, 0}));
  EXPECT_EQ(t.data_ptr(), nullptr);
  EXPECT_EQ(deleted.load(), 1);
}

TEST(DLPack, PinnedHostMemoryIsACpuTensor) {
  const Tensor memory = counting(4, DType::i32, Device::cpu());
  std::atomic<int> deleted{0};
  DLManagedTensor* m = foreign_view(memory, 0, {4}, std::nullopt, &deleted);
  m->dl_tensor.device.device_type = kDLCUDAHost;
  const Tensor t = from_dlpack(m);
  EXPECT_EQ(t.device(), Device::cpu());
  EXPECT_EQ(to_vector(t), expected_view({4}, {1}, 0, DType::i32));
}

// to_dlpack hands out memory whose producing work on the current stream has finished: here a slow
// task on a CPU stream writes the values.
TEST(DLPackStreams, ToDlpackWaitsForTheWorkQueuedOnTheCurrentStream) {
  Stream s = Stream::create(Device::cpu());
  StreamGuard guard(s);
  Tensor t = empty({1024}, DType::f32, Device::cpu());
  float* data = static_cast<float*>(t.data_ptr());
  const auto t0 = Clock::now();
  enqueue_sleep(s, 150);
  enqueue(s, [data] {
    for (int i = 0; i < 1024; ++i) data[i] = static_cast<float>(i);
  });
  DLManagedTensor* m = to_dlpack(t);
  EXPECT_GE(seconds_since(t0), 0.14);
  const auto* seen = static_cast<const float*>(m->dl_tensor.data);
  for (int i = 0; i < 1024; ++i) ASSERT_EQ(seen[i], static_cast<float>(i)) << i;
  m->deleter(m);
}

// The deleter gives the memory back to its producer, so it must not run while defer work queued on
// the tensor may still read it: it waits (off the host) for the stream current at import.
TEST(DLPackStreams, TheDeleterWaitsForWorkQueuedOnTheImportStream) {
  Stream s = Stream::create(Device::cpu());
  StreamGuard guard(s);
  auto buffer = std::make_shared<std::vector<float>>(256, 1.f);
  std::atomic<int> deleted{0};
  DLDataType f32 = dl_dtype(DType::f32);
  std::atomic<float> sum_seen{0.f};
  const auto t0 = Clock::now();
  {
    const Tensor t = from_dlpack(foreign(buffer, buffer->data(), 0, dl_device(Device::cpu()), f32, {256}, std::nullopt,
                                         &deleted));
    const float* data = static_cast<const float*>(t.data_ptr());
    enqueue_sleep(s, 200);
    enqueue(s, [data, &sum_seen] {  // a kernel reading the memory after the last handle is gone
      float sum = 0.f;
      for (int i = 0; i < 256; ++i) sum += data[i];
      sum_seen = sum;
    });
  }
  EXPECT_LT(seconds_since(t0), 0.1) << "dropping the tensor blocked the host";
  EXPECT_EQ(deleted.load(), 0) << "the deleter ran while a task on the import stream could still read the memory";
  s.synchronize();
  EXPECT_EQ(sum_seen.load(), 256.f);
  EXPECT_TRUE(eventually([&] { return deleted.load() == 1; }));
}

// ... and for the streams the memory was marked as used on (record_stream, a wait on another stream).
TEST(DLPackStreams, TheDeleterWaitsForStreamsTheMemoryWasUsedOn) {
  Stream other = Stream::create(Device::cpu());
  auto buffer = std::make_shared<std::vector<float>>(16, 2.f);
  std::atomic<int> deleted{0};
  {
    const Tensor t = from_dlpack(
        foreign(buffer, buffer->data(), 0, dl_device(Device::cpu()), dl_dtype(DType::f32), {16}, std::nullopt, &deleted));
    record_stream(t, other);
    enqueue_sleep(other, 150);
  }
  EXPECT_EQ(deleted.load(), 0);
  other.synchronize();
  EXPECT_TRUE(eventually([&] { return deleted.load() == 1; }));
}
