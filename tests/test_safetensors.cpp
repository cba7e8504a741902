// safetensors files (docs/api.md section 12): round trips of every dtype, shape and layout on both
// devices, the memory mapping the CPU tensors view, hand-made files that exercise what the Python
// package does not write (misaligned data, __metadata__), and one test per fault a malformed,
// truncated or hostile file can have. CUDA cases skip themselves without a GPU.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <random>

#include <defer/defer.hpp>
#include <defer/interop.hpp>

#include "interop/safetensors_format.hpp"
#include "runtime/copy.hpp"
#include "runtime/stream_ordered_pool.hpp"
#include "runtime/tensor_impl.hpp"
#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<unsigned char>;
constexpr DType kAllDTypes[] = {DType::f32, DType::i32, DType::f16, DType::bf16, DType::i64, DType::boolean};

std::vector<Device> devices() {
  std::vector<Device> d{Device::cpu()};
  if (cuda_available()) d.push_back(Device::cuda(0));
  return d;
}

// A fresh directory per test, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("defer_safetensors_" + std::to_string(::getpid()) + "_" + std::to_string(counter.fetch_add(1)));
    fs::remove_all(path_);
    fs::create_directories(path_);
    path_ = fs::canonical(path_);  // as /proc/self/maps names the mapped files
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path_)) names.push_back(e.path().filename().string());
    return names;
  }

 private:
  fs::path path_;
};

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const Bytes& bytes) {
  // A new file rather than a truncated one: ext4 flushes a file truncated and rewritten when it is
  // closed, which makes the truncation sweep a hundred times slower.
  fs::remove(path);
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

Bytes le64(std::uint64_t v) {
  Bytes b(8);
  for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
  return b;
}

// A file as the format lays it out: the header's length, the header, the data. The header is padded
// with spaces to a multiple of 8 unless `pad` is false.
Bytes make_file(std::string header, const Bytes& data = {}, bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  Bytes file(8 + header.size() + data.size());
  const Bytes length = le64(header.size());
  std::copy(length.begin(), length.end(), file.begin());
  std::copy(header.begin(), header.end(), file.begin() + 8);
  std::copy(data.begin(), data.end(), file.begin() + 8 + static_cast<std::ptrdiff_t>(header.size()));
  return file;
}

// Random elements of `dtype`, none of them zero (so that a missing write cannot pass), and no NaN
// or infinity; booleans are 0 or 1, mostly 1.
Bytes random_elements(DType dtype, std::size_t n, unsigned seed) {
  std::mt19937_64 gen(seed);
  const std::size_t size = dtype_size(dtype);
  Bytes out(n * size);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t v = 0;
    switch (dtype) {
      case DType::f32: {
        const float f = random_values(1, static_cast<unsigned>(gen()))[0];
        std::memcpy(&v, &f, 4);
        break;
      }
      case DType::f16:  // exponent 0x1f is inf/NaN
        do v = gen() & 0xffff;
        while ((v & 0x7fff) == 0 || ((v >> 10) & 0x1f) == 0x1f);
        break;
      case DType::bf16:  // exponent 0xff is inf/NaN
        do v = gen() & 0xffff;
        while ((v & 0x7fff) == 0 || ((v >> 7) & 0xff) == 0xff);
        break;
      case DType::boolean:
        v = gen() % 4 != 0;
        break;
      default:
        do v = gen();
        while ((size == 4 ? (v & 0xffffffffu) : v) == 0);
    }
    std::memcpy(out.data() + i * size, &v, size);  // little endian: the low bytes
  }
  return out;
}

// A new contiguous tensor holding `bytes`, on `device`.
Tensor tensor_of(const Bytes& bytes, Shape shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  EXPECT_EQ(t.nbytes(), bytes.size());
  if (!bytes.empty())
    detail::copy_from_host_async(t.data_ptr(), std::make_shared<const Bytes>(bytes), *detail::current_stream_impl(device));
  return t;
}

// t's elements, row-major, on the host (any device, any strides).
Bytes bytes_of(const Tensor& t) {
  detail::StreamImpl& stream = *detail::current_stream_impl(t.device());
  const Tensor dense = detail::contiguous_copy(t, stream);
  Bytes out(dense.nbytes());
  detail::copy_async(out.data(), dense.data_ptr(), out.size(), stream);
  stream.synchronize();
  return out;
}

// The elements of a view (shape, strides and offset in elements) of row-major `base`, gathered on
// the host: what a saved strided tensor must hold, computed independently of the runtime's copy.
Bytes gather(const Bytes& base, std::size_t element, const Shape& shape, const Shape& strides, int64_t offset) {
  int64_t numel = 1;
  for (int64_t e : shape) numel *= e;
  Bytes out;
  std::vector<int64_t> index(shape.size(), 0);
  for (int64_t i = 0; i < numel; ++i) {
    int64_t at = offset;
    for (std::size_t d = 0; d < shape.size(); ++d) at += index[d] * strides[d];
    out.insert(out.end(), base.begin() + at * static_cast<int64_t>(element),
               base.begin() + (at + 1) * static_cast<int64_t>(element));
    for (std::size_t d = shape.size(); d-- > 0;)
      if (++index[d] < shape[d]) break;
      else index[d] = 0;
  }
  return out;
}

// Whether /proc/self/maps lists a mapping of `path`.
bool is_mapped(const std::string& path) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.size() >= path.size() && line.compare(line.size() - path.size(), path.size(), path) == 0) return true;
  return false;
}

// The mapping of `path` is released once the work that read it has finished: at once when nothing
// was queued on it, else by the runtime's release queue right after that work (runtime/storage.hpp),
// so a check after the work polls for a little while.
bool unmapped_soon(const std::string& path) {
  for (int i = 0; i < 500 && is_mapped(path); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return !is_mapped(path);
}

// Loading `path` throws defer::Error whose message names the file and contains every part.
void expect_load_error(const std::string& path, const std::vector<std::string>& parts, Device d = Device::cpu()) {
  try {
    load_safetensors(path, d);
    ADD_FAILURE() << "loading " << path << " did not throw";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path), std::string::npos) << "the message does not name the file: " << message;
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << "the message lacks \"" << part << "\": " << message;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "loading " << path << " threw something else than defer::Error: " << e.what();
  }
}

// One tensor of every dtype with random contents, on `device`.
std::map<std::string, Tensor> every_dtype(Device device, unsigned seed) {
  std::map<std::string, Tensor> tensors;
  for (DType dtype : kAllDTypes) {
    const Shape shape{3, 5, 7};
    tensors[std::string("t_") + dtype_name(dtype)] =
        tensor_of(random_elements(dtype, 105, seed++), shape, dtype, device);
  }
  return tensors;
}

void expect_same(const std::map<std::string, Tensor>& expected, const std::map<std::string, Tensor>& actual,
                 Device device) {
  ASSERT_EQ(expected.size(), actual.size());
  for (const auto& [name, want] : expected) {
    const auto it = actual.find(name);
    ASSERT_NE(it, actual.end()) << name;
    const Tensor& got = it->second;
    EXPECT_EQ(got.dtype(), want.dtype()) << name;
    EXPECT_EQ(got.shape(), want.shape()) << name;
    EXPECT_EQ(got.device(), device) << name;
    EXPECT_TRUE(got.is_contiguous()) << name;
    EXPECT_EQ(bytes_of(got), bytes_of(want)) << name << " (" << dtype_name(want.dtype()) << ")";
  }
}

// A small valid file with several dtypes, as save_safetensors writes it.
Bytes valid_file(const TempDir& dir) {
  const std::string path = dir.file("valid.safetensors");
  std::map<std::string, Tensor> tensors = every_dtype(Device::cpu(), 7);
  tensors["scalar"] = tensor_of(random_elements(DType::f32, 1, 8), {}, DType::f32, Device::cpu());
  save_safetensors(path, tensors);
  return read_file(path);
}

}  // namespace

// ---- round trips ----------------------------------------------------------------------------------------

TEST(Safetensors, EveryDtypeRoundTripsExactly) {
  for (Device device : devices()) {
    SCOPED_TRACE(device.str());
    TempDir dir;
    const auto tensors = every_dtype(device, 1);
    save_safetensors(dir.file("all.safetensors"), tensors);
    for (Device load_on : devices()) {
      SCOPED_TRACE("loaded on " + load_on.str());
      expect_same(tensors, load_safetensors(dir.file("all.safetensors"), load_on), load_on);
    }
  }
}

TEST(Safetensors, EmptyAndZeroDimTensors) {
  for (Device device : devices()) {
    SCOPED_TRACE(device.str());
    TempDir dir;
    std::map<std::string, Tensor> tensors;
    tensors["scalar_f32"] = tensor_of(random_elements(DType::f32, 1, 3), {}, DType::f32, device);
    tensors["scalar_bool"] = tensor_of(random_elements(DType::boolean, 1, 4), {}, DType::boolean, device);
    tensors["empty"] = empty({0}, DType::f32, device);
    tensors["empty_3d"] = empty({2, 0, 3}, DType::bf16, device);
    tensors["after"] = tensor_of(random_elements(DType::i64, 4, 5), {4}, DType::i64, device);
    save_safetensors(dir.file("shapes.safetensors"), tensors);
    for (Device load_on : devices()) {
      const auto loaded = load_safetensors(dir.file("shapes.safetensors"), load_on);
      expect_same(tensors, loaded, load_on);
      EXPECT_EQ(loaded.at("scalar_f32").dim(), 0);
      EXPECT_EQ(loaded.at("empty_3d").numel(), 0);
    }
  }
}

TEST(Safetensors, NoTensorsAtAll) {
  TempDir dir;
  save_safetensors(dir.file("none.safetensors"), {});
  EXPECT_TRUE(load_safetensors(dir.file("none.safetensors"), Device::cpu()).empty());
}

TEST(Safetensors, StridedTensorsAreSavedAsTheirElements) {
  for (Device device : devices()) {
    SCOPED_TRACE(device.str());
    TempDir dir;
    const Bytes base = random_elements(DType::f32, 4 * 6, 11);
    const Tensor x = tensor_of(base, {4, 6}, DType::f32, device);
    const Bytes row = random_elements(DType::bf16, 6, 12);
    const Tensor r = tensor_of(row, {1, 6}, DType::bf16, device);
    std::map<std::string, Tensor> views;
    views["transposed"] = wait(transpose(x));
    views["stepped"] = wait(slice(x, 1, 1, 6, 2));
    views["column"] = wait(select(x, 1, 3));
    views["broadcast"] = wait(expand(r, {3, 6}));
    ASSERT_FALSE(views["transposed"].is_contiguous());
    ASSERT_FALSE(views["broadcast"].is_contiguous());
    save_safetensors(dir.file("views.safetensors"), views);

    const auto loaded = load_safetensors(dir.file("views.safetensors"), Device::cpu());
    EXPECT_EQ(bytes_of(loaded.at("transposed")), gather(base, 4, {6, 4}, {1, 6}, 0));
    EXPECT_EQ(bytes_of(loaded.at("stepped")), gather(base, 4, {4, 3}, {6, 2}, 1));
    EXPECT_EQ(bytes_of(loaded.at("column")), gather(base, 4, {4}, {6}, 3));
    EXPECT_EQ(bytes_of(loaded.at("broadcast")), gather(row, 2, {3, 6}, {0, 1}, 0));
    EXPECT_EQ(loaded.at("transposed").shape(), (Shape{6, 4}));
  }
}

TEST(Safetensors, SavingWaitsForTheTensorsProducers) {
  TempDir dir;
  const Tensor x = tensor_of(random_elements(DType::f32, 64, 13), {64}, DType::f32, Device::cpu());
  const Stream s = current_stream(Device::cpu());
  enqueue_sleep(s, 30);  // the result below is written after this
  const Tensor y = wait(x * 2.f);
  save_safetensors(dir.file("y.safetensors"), {{"y", y}});
  EXPECT_EQ(to_vector(load_safetensors(dir.file("y.safetensors"), Device::cpu()).at("y")), to_vector(y));
}

TEST(Safetensors, HeaderIsSortedAlignedAndWithoutMetadata) {
  TempDir dir;
  std::map<std::string, Tensor> tensors;
  tensors["b_bool"] = tensor_of(random_elements(DType::boolean, 3, 1), {3}, DType::boolean, Device::cpu());
  tensors["a_f16"] = tensor_of(random_elements(DType::f16, 3, 2), {3}, DType::f16, Device::cpu());
  tensors["c_i64"] = tensor_of(random_elements(DType::i64, 3, 3), {3}, DType::i64, Device::cpu());
  tensors["d_f32"] = tensor_of(random_elements(DType::f32, 3, 4), {3}, DType::f32, Device::cpu());
  save_safetensors(dir.file("h.safetensors"), tensors);
  const Bytes file = read_file(dir.file("h.safetensors"));
  const auto layout = detail::safetensors::parse(file, "h");
  EXPECT_EQ(layout.data_start % 8, 0u) << "the data starts 8-byte aligned";
  EXPECT_EQ(layout.data_start + layout.data_size, file.size());
  std::vector<std::string> names;
  for (const auto& e : layout.entries) {
    names.push_back(e.name);
    EXPECT_EQ((layout.data_start + e.begin) % dtype_size(e.dtype), 0u) << e.name << " is aligned";
  }
  EXPECT_EQ(names, (std::vector<std::string>{"a_f16", "b_bool", "c_i64", "d_f32"}));
  const std::string header(file.begin() + 8, file.begin() + static_cast<std::ptrdiff_t>(layout.data_start));
  EXPECT_EQ(header.find("__metadata__"), std::string::npos);
  EXPECT_LT(header.find("a_f16"), header.find("b_bool")) << "names sorted in the header";
  EXPECT_EQ(header.size() % 8, 0u);
  EXPECT_EQ(header[header.find_last_not_of(' ')], '}');
  EXPECT_LT(header.size() - header.find_last_not_of(' ') - 1, 8u) << "padded with spaces only as far as alignment needs";
}

TEST(Safetensors, SaveReplacesAnExistingFile) {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  save_safetensors(path, every_dtype(Device::cpu(), 21));
  const auto second = every_dtype(Device::cpu(), 22);
  save_safetensors(path, second);
  expect_same(second, load_safetensors(path, Device::cpu()), Device::cpu());
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"w.safetensors"}) << "no temporary file is left behind";
}

// ---- the CPU mapping -------------------------------------------------------------------------------------

TEST(Safetensors, MappedTensorsShareOneStorage) {
  TempDir dir;
  save_safetensors(dir.file("m.safetensors"), every_dtype(Device::cpu(), 31));
  const auto pool_bytes = memory_stats(Device::cpu()).allocated_bytes;
  const auto loaded = load_safetensors(dir.file("m.safetensors"), Device::cpu());
  EXPECT_EQ(memory_stats(Device::cpu()).allocated_bytes, pool_bytes) << "nothing is copied";
  const auto& storage = loaded.begin()->second.impl()->storage;
  ASSERT_EQ(dynamic_cast<const detail::Allocation*>(storage.get()), nullptr) << "a mapping, not a pool block";
  const auto* begin = static_cast<const char*>(storage->data());
  for (const auto& [name, t] : loaded) {
    EXPECT_EQ(t.impl()->storage, storage) << name << " views the same mapping";
    const auto* p = static_cast<const char*>(t.data_ptr());
    EXPECT_TRUE(p >= begin && p + t.nbytes() <= begin + storage->nbytes()) << name;
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % dtype_size(t.dtype()), 0u) << name;
  }
}

TEST(Safetensors, TensorsKeepTheMappingAliveAlone) {
  TempDir dir;
  const std::string path = dir.file("alive.safetensors");
  const auto tensors = every_dtype(Device::cpu(), 41);
  save_safetensors(path, tensors);
  Tensor kept;
  {
    auto loaded = load_safetensors(path, Device::cpu());
    EXPECT_TRUE(is_mapped(path));
    kept = loaded.at("t_f32");
  }  // the map and every other tensor are gone
  EXPECT_TRUE(is_mapped(path));
  EXPECT_EQ(bytes_of(kept), bytes_of(tensors.at("t_f32")));  // ASan: the bytes are still there
  EXPECT_EQ(to_vector(wait(kept + 1.f)), to_vector(wait(tensors.at("t_f32") + 1.f)));
  kept = Tensor();
  EXPECT_FALSE(is_mapped(path)) << "the last tensor unmapped the file";
}

TEST(Safetensors, QueuedWorkKeepsTheMappingAlive) {
  TempDir dir;
  const std::string path = dir.file("queued.safetensors");
  const auto tensors = every_dtype(Device::cpu(), 43);
  save_safetensors(path, tensors);
  const auto expected = to_vector(wait(tensors.at("t_f32") * 2.f));
  Tensor doubled;
  {
    const auto loaded = load_safetensors(path, Device::cpu());
    enqueue_sleep(current_stream(Device::cpu()), 50);  // the op runs after this, when no tensor is left
    doubled = wait(loaded.at("t_f32") * 2.f);
  }
  EXPECT_EQ(to_vector(doubled), expected);  // ASan: the op read the mapping, which was still there
  EXPECT_TRUE(unmapped_soon(path));

  // The same on another stream that the tensor was marked as used on (the recordStream rule).
  const Stream other = Stream::create(Device::cpu());
  std::promise<void> gate;
  {
    const auto loaded = load_safetensors(path, Device::cpu());
    record_stream(loaded.at("t_f32"), other);
    StreamGuard guard(other);
    enqueue(other, [opened = gate.get_future().share()] { opened.wait(); });  // holds the op back
    doubled = wait(loaded.at("t_f32") * 2.f);
  }
  EXPECT_TRUE(is_mapped(path)) << "the op queued on the other stream still needs it";
  gate.set_value();
  other.synchronize();
  EXPECT_EQ(to_vector(doubled), expected);
  EXPECT_TRUE(unmapped_soon(path));
}

TEST(Safetensors, WritesToLoadedTensorsDoNotChangeTheFile) {
  TempDir dir;
  const std::string path = dir.file("cow.safetensors");
  save_safetensors(path, every_dtype(Device::cpu(), 51));
  const Bytes before = read_file(path);
  auto loaded = load_safetensors(path, Device::cpu());
  Tensor& t = loaded.at("t_i32");
  std::memset(t.data_ptr(), 0x5a, t.nbytes());  // a write through the mapping: never faults
  EXPECT_EQ(bytes_of(t), Bytes(t.nbytes(), 0x5a));
  EXPECT_EQ(read_file(path), before);
  const auto again = load_safetensors(path, Device::cpu());
  EXPECT_NE(bytes_of(again.at("t_i32")), Bytes(t.nbytes(), 0x5a)) << "another load sees the file, not the write";
}

TEST(Safetensors, MisalignedDataIsCopied) {
  // A BOOL byte first puts the F32 and I64 after it at odd offsets: valid for the format, but not
  // readable in place.
  const Bytes flag = {1};
  const Bytes f = random_elements(DType::f32, 3, 61);
  const Bytes i = random_elements(DType::i64, 2, 62);
  Bytes data = flag;
  data.insert(data.end(), f.begin(), f.end());
  data.insert(data.end(), i.begin(), i.end());
  TempDir dir;
  const std::string path = dir.file("odd.safetensors");
  write_file(path, make_file(R"({"flag":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]},)"
                             R"("f":{"dtype":"F32","shape":[3],"data_offsets":[1,13]},)"
                             R"("i":{"dtype":"I64","shape":[2],"data_offsets":[13,29]}})",
                             data));
  const auto loaded = load_safetensors(path, Device::cpu());
  EXPECT_EQ(bytes_of(loaded.at("flag")), flag);
  EXPECT_EQ(bytes_of(loaded.at("f")), f);
  EXPECT_EQ(bytes_of(loaded.at("i")), i);
  for (const char* name : {"f", "i"}) {
    const Tensor& t = loaded.at(name);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data_ptr()) % dtype_size(t.dtype()), 0u) << name;
    EXPECT_NE(t.impl()->storage, loaded.at("flag").impl()->storage) << name << " is a copy";
  }
  // Kernels read the elements as their type (UBSan would report a misaligned read).
  std::vector<float> fv(3);
  std::memcpy(fv.data(), f.data(), 12);
  const auto sum = to_vector(wait(loaded.at("f") + loaded.at("f")));
  for (int k = 0; k < 3; ++k) EXPECT_EQ(sum[k], fv[k] + fv[k]);
  for (Device d : devices()) {
    if (d.is_cuda()) expect_same(load_safetensors(path, Device::cpu()), load_safetensors(path, d), d);
  }
}

TEST(Safetensors, MetadataIsIgnored) {
  const Bytes f = random_elements(DType::f32, 2, 71);
  TempDir dir;
  const std::string path = dir.file("meta.safetensors");
  write_file(path, make_file(R"({"__metadata__":{"format":"pt","note":"x"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f));
  const auto loaded = load_safetensors(path, Device::cpu());
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(bytes_of(loaded.at("w")), f);
}

TEST(Safetensors, GapsAndTrailingBytesAreNeverRead) {
  const Bytes f = random_elements(DType::f32, 2, 81);
  Bytes data(4 + f.size() + 5, 0xee);  // 4 bytes before the tensor, 5 after
  std::copy(f.begin(), f.end(), data.begin() + 4);
  TempDir dir;
  const std::string path = dir.file("gap.safetensors");
  write_file(path, make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", data));
  EXPECT_EQ(bytes_of(load_safetensors(path, Device::cpu()).at("w")), f);
}

// ---- CUDA ------------------------------------------------------------------------------------------------

TEST(Safetensors, CudaLoadsAreStreamOrderedUploads) {
  DEFER_SKIP_WITHOUT_GPU();
  TempDir dir;
  const auto tensors = every_dtype(Device::cpu(), 91);
  save_safetensors(dir.file("g.safetensors"), tensors);
  const Stream s = Stream::create(Device::cuda(0));
  StreamGuard guard(s);
  const auto loaded = load_safetensors(dir.file("g.safetensors"), Device::cuda(0));
  for (const auto& [name, t] : loaded) EXPECT_EQ(t.device(), Device::cuda(0)) << name;
  expect_same(tensors, loaded, Device::cuda(0));
  EXPECT_FALSE(is_mapped(dir.file("g.safetensors"))) << "the mapping is gone once the uploads ran";
}

TEST(Safetensors, UnavailableDeviceIsADeviceError) {
  TempDir dir;
  save_safetensors(dir.file("d.safetensors"), every_dtype(Device::cpu(), 92));
  EXPECT_THROW(load_safetensors(dir.file("d.safetensors"), Device::cuda(7)), DeviceError);
}

// ---- faults ----------------------------------------------------------------------------------------------

struct FaultCase {
  const char* what;
  Bytes file;
  std::vector<std::string> message;
};

std::vector<FaultCase> fault_cases() {
  const std::string ok_entry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const Bytes eight(8, 1);
  auto with = [&](const std::string& header, const Bytes& data = Bytes(8, 1)) { return make_file(header, data); };
  Bytes bad_utf8 = make_file("{\"a\xff\":" + ok_entry + "}", eight);
  return {
      {"shorter than the length field", Bytes{1, 2, 3}, {"truncated", "3 bytes"}},
      {"empty file", Bytes{}, {"truncated", "0 bytes"}},
      {"header length over the limit", le64(100'000'001), {"header length 100000001", "exceeds", "100000000"}},
      {"huge header length", le64(~0ull), {"header length 18446744073709551615", "exceeds"}},
      {"header length past the end", [] {
         Bytes b(40, ' ');  // 8 + 32 bytes, claiming 64
         const Bytes n = le64(64);
         std::copy(n.begin(), n.end(), b.begin());
         return b;
       }(),
       {"header length 64 runs past the end of the file (40 bytes)"}},
      {"empty header", make_file("", {}, false), {"not valid JSON"}},
      {"bad JSON", with(R"({"a": {"dtype": "F32",)"), {"not valid JSON"}},
      {"JSON with trailing garbage", with(R"({} x)"), {"not valid JSON"}},
      {"bad UTF-8", bad_utf8, {"not valid JSON"}},
      {"a NUL byte ending the JSON early", with(std::string("{}\0{\"a\":1}", 10)), {"not valid JSON", "NUL byte at offset 2"}},
      {"a name with a control character", with(R"({"a\nb":{"dtype":"X9","shape":[2],"data_offsets":[0,8]}})"),
       {"unknown dtype 'X9' of tensor 'a\\x0ab'"}},
      {"header not an object", with("[1, 2]"), {"the header is not a JSON object"}},
      {"header a string", with(R"("abc")"), {"the header is not a JSON object"}},
      {"nested too deep", with(R"({"a":{"dtype":"F32","shape":[[[2]]],"data_offsets":[0,8]}})"),
       {"nests containers deeper"}},
      {"deep array bomb", with(std::string(10000, '[') + std::string(10000, ']')), {"nests containers deeper"}},
      {"entry not an object", with(R"({"a":[1,2]})"), {"the entry of tensor 'a' is not a JSON object"}},
      {"missing dtype", with(R"({"a":{"shape":[2],"data_offsets":[0,8]}})"), {"tensor 'a' has no \"dtype\""}},
      {"missing shape", with(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})"), {"tensor 'a' has no \"shape\""}},
      {"missing data_offsets", with(R"({"a":{"dtype":"F32","shape":[2]}})"), {"tensor 'a' has no \"data_offsets\""}},
      {"dtype not a string", with(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})"),
       {"tensor 'a'", "\"dtype\" is not a string"}},
      {"shape not an array", with(R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})"),
       {"tensor 'a'", "\"shape\" is not an array"}},
      {"shape of floats", with(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})"),
       {"tensor 'a'", "\"shape\" is not an array of integers"}},
      {"data_offsets of one", with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}})"),
       {"tensor 'a'", "\"data_offsets\" is not an array of two integers"}},
      {"data_offsets of strings", with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":["0","8"]}})"),
       {"tensor 'a'", "\"data_offsets\" is not an array of two integers"}},
      {"negative offset", with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})"),
       {"tensor 'a'", "negative offset"}},
      {"unknown dtype", with(R"({"a":{"dtype":"X9","shape":[2],"data_offsets":[0,8]}})"),
       {"unknown dtype 'X9' of tensor 'a'"}},
      {"unsupported dtype F64", with(R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})"),
       {"unsupported dtype F64 of tensor 'a'"}},
      {"unsupported dtype U8", with(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})"),
       {"unsupported dtype U8 of tensor 'a'"}},
      {"unsupported dtype F8_E4M3", with(R"({"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})"),
       {"unsupported dtype F8_E4M3 of tensor 'a'"}},
      {"negative extent", with(R"({"a":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]}})"),
       {"tensor 'a' has a negative extent", "-1"}},
      {"extent beyond int64", with(R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})"),
       {"tensor 'a'", "overflows int64"}},
      {"element count overflows", with(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})"),
       {"the element count of tensor 'a'", "overflows int64"}},
      {"byte size overflows", with(R"({"a":{"dtype":"I64","shape":[2305843009213693952],"data_offsets":[0,8]}})"),
       {"the byte size of tensor 'a'", "overflows int64"}},
      {"begin after end", with(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})"),
       {"data_offsets [8, 4] of tensor 'a' have begin > end"}},
      {"end past the data", with(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})"),
       {"data_offsets [0, 16] of tensor 'a' run past the end of the data (8 bytes)"}},
      {"huge end", with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551608,18446744073709551615]}})"),
       {"tensor 'a'", "run past the end of the data"}},
      {"size differs from the shape", with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})"),
       {"data_offsets [0, 8] of tensor 'a' span 8 bytes, but its shape [1] of F32 needs 4"}},
      {"overlapping tensors",
       with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[1],"data_offsets":[4,8]}})"),
       {"the data of tensor 'a' [0, 8] and of tensor 'b' [4, 8] overlap"}},
      {"the same range twice",
       with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})"),
       {"tensor 'a' [0, 8]", "tensor 'b' [0, 8] overlap"}},
      {"duplicate names", with(R"({"a":)" + ok_entry + R"(,"a":)" + ok_entry + "}"), {"duplicate tensor name 'a'"}},
      {"duplicate field", with(R"({"a":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}})"),
       {"duplicate key 'dtype' in the entry of 'a'"}},
      {"metadata not an object", with(R"({"__metadata__":[1],"a":)" + ok_entry + "}"),
       {"\"__metadata__\" is not a JSON object"}},
      {"metadata not strings", with(R"({"__metadata__":{"k":1},"a":)" + ok_entry + "}"),
       {"\"__metadata__\" entry 'k' is not a string"}},
  };
}

TEST(Safetensors, EveryFaultIsAnErrorNamingFileAndFault) {
  TempDir dir;
  const auto baseline = memory_stats(Device::cpu()).allocated_bytes;
  int n = 0;
  for (const FaultCase& c : fault_cases()) {
    SCOPED_TRACE(c.what);
    const std::string path = dir.file("fault_" + std::to_string(n++) + ".safetensors");
    write_file(path, c.file);
    expect_load_error(path, c.message);
    // The parser alone says the same (it is what the fuzz target runs).
    EXPECT_THROW(detail::safetensors::parse(c.file, "x"), Error);
  }
  EXPECT_EQ(memory_stats(Device::cpu()).allocated_bytes, baseline);
  for (Device d : devices()) {  // on CUDA the faults are found before anything is allocated, too
    if (d.is_cuda()) expect_load_error(dir.file("fault_0.safetensors"), {"truncated"}, d);
  }
}

TEST(Safetensors, MessagesQuoteTheFileInShortPrintableExcerpts) {
  const std::string name(100000, 'n');
  const Bytes file = make_file(R"({")" + name + R"(":{"dtype":"X9","shape":[2],"data_offsets":[0,8]}})", Bytes(8, 1));
  try {
    detail::safetensors::parse(file, "long.safetensors");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_LT(message.size(), 400u) << "a name from the file is cut short in the message";
    EXPECT_NE(message.find("unknown dtype 'X9' of tensor 'nnnn"), std::string::npos) << message;
    EXPECT_NE(message.find("...'"), std::string::npos) << message;
  }
  const std::string binary = "{\"a\": \x01\xff}";
  try {
    detail::safetensors::parse(make_file(binary), "binary.safetensors");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    for (const char c : std::string(e.what())) {
      const auto b = static_cast<unsigned char>(c);
      EXPECT_TRUE(b >= 0x20 && b < 0x7f) << "byte " << int(b) << " in " << e.what();
    }
  }
}

TEST(Safetensors, EveryTruncationIsAnError) {
  TempDir dir;
  const Bytes file = valid_file(dir);
  const std::string path = dir.file("cut.safetensors");
  for (std::size_t size = 0; size < file.size(); ++size) {
    write_file(path, Bytes(file.begin(), file.begin() + static_cast<std::ptrdiff_t>(size)));
    try {
      load_safetensors(path, Device::cpu());
      ADD_FAILURE() << "a prefix of " << size << " of " << file.size() << " bytes loaded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  write_file(path, file);
  EXPECT_EQ(load_safetensors(path, Device::cpu()).size(), 7u) << "the whole file loads";
}

TEST(Safetensors, FileThatCannotBeReadIsAnError) {
  TempDir dir;
  expect_load_error(dir.file("missing.safetensors"), {"cannot open", "No such file or directory"});
  fs::create_directory(dir.file("a_directory"));
  expect_load_error(dir.file("a_directory"), {"is not a regular file"});
}

TEST(Safetensors, BadSavesThrowAndLeaveNothingBehind) {
  TempDir dir;
  const std::string path = dir.file("keep.safetensors");
  const auto original = every_dtype(Device::cpu(), 101);
  save_safetensors(path, original);
  const Bytes before = read_file(path);

  try {
    save_safetensors(path, {{"fine", original.at("t_f32")}, {"hole", Tensor()}});
    ADD_FAILURE() << "an undefined tensor was saved";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'hole'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(save_safetensors(path, {{"__metadata__", original.at("t_f32")}}), std::invalid_argument);
  EXPECT_THROW(save_safetensors(path, {{"bad\xff", original.at("t_f32")}}), std::invalid_argument) << "not UTF-8";

  const std::string nowhere = dir.file("no/such/dir/x.safetensors");
  try {
    save_safetensors(nowhere, original);
    ADD_FAILURE() << "saved into a directory that does not exist";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(nowhere), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos) << e.what();
  }

  // A directory in the way: the data is written, then the rename fails.
  fs::create_directories(dir.file("occupied/inside"));
  EXPECT_THROW(save_safetensors(dir.file("occupied"), original), Error);

  // A write that fails half way (the file size limit: EFBIG) leaves the old file as it was.
  {
    struct rlimit old {};
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
    auto* previous = ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = old;
    small.rlim_cur = 200;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    try {
      save_safetensors(path, every_dtype(Device::cpu(), 102));
      ADD_FAILURE() << "a write past the file size limit succeeded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("cannot write '" + path + "'"), std::string::npos) << e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &old);
    ::signal(SIGXFSZ, previous);
  }
  EXPECT_EQ(read_file(path), before);
  std::vector<std::string> left = dir.entries();
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"keep.safetensors", "occupied"})) << "no temporary file is left behind";
}

TEST(Safetensors, RuntimeStaysUsableAfterBadFiles) {
  TempDir dir;
  const Tensor x = from_vector({1.f, 2.f, 3.f}, {3}, Device::cpu());
  const auto baseline = memory_stats(Device::cpu()).allocated_bytes;
  const std::string path = dir.file("bad.safetensors");
  for (const FaultCase& c : fault_cases()) {
    write_file(path, c.file);
    EXPECT_THROW(load_safetensors(path, Device::cpu()), Error) << c.what;
  }
  EXPECT_EQ(to_vector(wait(x * 2.f)), (std::vector<float>{2.f, 4.f, 6.f}));
  save_safetensors(path, {{"x", x}});
  EXPECT_EQ(to_vector(load_safetensors(path, Device::cpu()).at("x")), (std::vector<float>{1.f, 2.f, 3.f}));
  EXPECT_EQ(memory_stats(Device::cpu()).allocated_bytes, baseline);
}

// The fuzz target's seed corpus: each file parses, or is refused with defer::Error, here too.
TEST(Safetensors, FuzzCorpusParsesOrIsRefused) {
  const fs::path corpus = fs::path(__FILE__).parent_path().parent_path() / "fuzz" / "corpus_safetensors";
  if (!fs::is_directory(corpus)) GTEST_SKIP() << corpus << " is not there";
  int valid = 0, refused = 0;
  for (const auto& e : fs::directory_iterator(corpus)) {
    try {
      load_safetensors(e.path().string(), Device::cpu());
      ++valid;
    } catch (const Error&) {
      ++refused;
    }
  }
  EXPECT_GT(valid, 0);
  EXPECT_GT(refused, 0);
}
