#include "cuda/fused/kernel_cache.hpp"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string_view>
#include <system_error>

#include "cuda/fused/cuda_codegen.hpp"
#include "runtime/cuda/cuda_check.hpp"

namespace defer::detail {

struct FusedKernelCache::Entry {
  std::mutex mutex;  // held while compiling or loading this entry
  std::atomic<bool> ready{false};
  CachedKernel kernel;
  std::atomic<cudaKernel_t> handle{nullptr};
  cudaLibrary_t library = nullptr;
};

namespace {

// Bumped whenever the file layout below changes.
constexpr std::uint32_t kDiskFormatVersion = 2;
constexpr char kMagic[8] = {'d', 'e', 'f', 'e', 'r', 'K', 'C', '\n'};
constexpr std::uintmax_t kMaxFileBytes = 64u << 20;

std::uint64_t fnv1a(std::string_view bytes, std::uint64_t h = 14695981039346656037ull) {
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

std::string hex(std::uint64_t v) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<std::size_t>(i)] = kHex[v & 0xf];
  return s;
}

// Everything a disk file must match besides its payload: the generated source by its hash and
// length (the source itself embeds the math and spells every op, so it alone decides the kernel).
std::string file_identity(const std::string& source, int arch) {
  return "format " + std::to_string(kDiskFormatVersion) + " nvrtc " + nvrtc_version() + " sm_" + std::to_string(arch) +
         " source " + hex(fnv1a(source)) + " " + std::to_string(source.size());
}

void put_u64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_bytes(std::string& out, std::string_view bytes) {
  put_u64(out, bytes.size());
  out.append(bytes);
}

// A bounds-checked reader of the file's fields.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  bool u64(std::uint64_t& v) {
    if (data_.size() - pos_ < 8) return false;
    v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(static_cast<unsigned char>(data_[pos_ + i])) << (8 * i);
    pos_ += 8;
    return true;
  }
  bool bytes(std::string_view& out) {
    std::uint64_t n = 0;
    if (!u64(n) || n > data_.size() - pos_) return false;
    out = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  std::size_t pos() const { return pos_; }

 private:
  std::string_view data_;
  std::size_t pos_ = 0;
};

// File: magic, identity, name, ptx, cubin (each a u64 length and the bytes), then the FNV-1a of
// everything before it.
std::string encode(const std::string& identity, const std::string& name, const CompiledProgram& binary) {
  std::string out(kMagic, sizeof kMagic);
  put_bytes(out, identity);
  put_bytes(out, name);
  put_bytes(out, binary.ptx);
  put_bytes(out, std::string_view(binary.cubin.data(), binary.cubin.size()));
  put_u64(out, fnv1a(out));
  return out;
}

std::optional<CompiledProgram> decode(std::string_view data, const std::string& identity, const std::string& name,
                                      int arch) {
  if (data.size() < sizeof kMagic + 8 || data.substr(0, sizeof kMagic) != std::string_view(kMagic, sizeof kMagic))
    return std::nullopt;
  Reader r(data.substr(sizeof kMagic));
  std::string_view id, stored_name, ptx, cubin;
  std::uint64_t checksum = 0;
  if (!r.bytes(id) || !r.bytes(stored_name) || !r.bytes(ptx) || !r.bytes(cubin)) return std::nullopt;
  const std::size_t body = sizeof kMagic + r.pos();
  if (!r.u64(checksum) || sizeof kMagic + r.pos() != data.size()) return std::nullopt;
  if (checksum != fnv1a(data.substr(0, body)) || id != identity || stored_name != name || ptx.empty())
    return std::nullopt;
  CompiledProgram binary;
  binary.ptx.assign(ptx);
  binary.cubin.assign(cubin.begin(), cubin.end());
  binary.arch = arch;
  return binary;
}

std::string map_key(const std::string& key, int arch) {
  std::string k = key;
  k.push_back(static_cast<char>(arch & 0xff));
  k.push_back(static_cast<char>((arch >> 8) & 0xff));
  return k;
}

std::filesystem::path usable_dir(const std::filesystem::path& dir) {
  if (dir.empty()) return {};
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (!std::filesystem::is_directory(dir, ec) || ec) return {};
  return dir;
}

}  // namespace

std::filesystem::path FusedKernelCache::default_disk_dir() {
  if (const char* dir = std::getenv("DEFER_CACHE_DIR"); dir != nullptr && *dir != '\0') return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg == '/')  // the spec ignores relative paths
    return std::filesystem::path(xdg) / "defer";
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0')
    return std::filesystem::path(home) / ".cache" / "defer";
  return {};
}

FusedKernelCache::FusedKernelCache() : FusedKernelCache(default_disk_dir()) {}

FusedKernelCache::FusedKernelCache(const std::filesystem::path& disk_dir) : disk_dir_(usable_dir(disk_dir)) {}

FusedKernelCache::~FusedKernelCache() {
  // A library exists only where a GPU loaded it, so a machine without one makes no CUDA call here.
  for (auto& [key, entry] : entries_)
    if (entry->library != nullptr) (void)cudaLibraryUnload(entry->library);
}

FusedKernelCache& FusedKernelCache::global() {
  static FusedKernelCache* cache = new FusedKernelCache();  // leaked on purpose (see the header)
  return *cache;
}

KernelCacheCounters FusedKernelCache::counters() const noexcept {
  KernelCacheCounters c;
  c.compiles = compiles_.load(std::memory_order_relaxed);
  c.memory_hits = memory_hits_.load(std::memory_order_relaxed);
  c.disk_hits = disk_hits_.load(std::memory_order_relaxed);
  c.disk_writes = disk_writes_.load(std::memory_order_relaxed);
  return c;
}

std::filesystem::path FusedKernelCache::disk_file(const std::string& source, int arch) const {
  if (disk_dir_.empty()) return {};
  return disk_dir_ / ("sm" + std::to_string(arch) + "-" + hex(fnv1a(file_identity(source, arch))) + ".kernel");
}

std::optional<CompiledProgram> FusedKernelCache::read_disk(const std::string& source, int arch,
                                                           const std::string& name) const {
  if (disk_dir_.empty()) return std::nullopt;
  const std::filesystem::path file = disk_file(source, arch);
  std::error_code ec;
  const std::uintmax_t size = std::filesystem::file_size(file, ec);
  if (ec || size > kMaxFileBytes) return std::nullopt;
  std::ifstream in(file, std::ios::binary);
  if (!in) return std::nullopt;
  std::string data(static_cast<std::size_t>(size), '\0');
  if (!in.read(data.data(), static_cast<std::streamsize>(size))) return std::nullopt;
  return decode(data, file_identity(source, arch), name, arch);
}

void FusedKernelCache::write_disk(const std::string& source, const std::string& name, const CompiledProgram& binary) {
  if (disk_dir_.empty() || !disk_writable_.load(std::memory_order_relaxed)) return;
  static std::atomic<std::uint64_t> sequence{0};
  const std::filesystem::path file = disk_file(source, binary.arch);
  std::filesystem::path temp = file;
  temp += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(sequence.fetch_add(1));
  const std::string data = encode(file_identity(source, binary.arch), name, binary);
  bool ok = false;
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    ok = out.is_open() && out.write(data.data(), static_cast<std::streamsize>(data.size())) && out.flush();
  }
  std::error_code ec;
  if (ok) {
    std::filesystem::rename(temp, file, ec);  // atomic: a reader sees the old file or the new one
    ok = !ec;
  }
  if (!ok) {
    std::filesystem::remove(temp, ec);
    disk_writable_.store(false, std::memory_order_relaxed);  // stop trying; reading still works
    return;
  }
  disk_writes_.fetch_add(1, std::memory_order_relaxed);
}

FusedKernelCache::Entry& FusedKernelCache::ready_entry(const std::string& key, int arch,
                                                        const kernels::FusedProgram& program,
                                                        const kernels::FusedLayout& layout) {
  Entry* entry = nullptr;
  {
    std::lock_guard lock(mutex_);
    auto& slot = entries_[map_key(key, arch)];
    if (!slot) slot = std::make_unique<Entry>();
    entry = slot.get();
  }
  if (entry->ready.load(std::memory_order_acquire)) {
    memory_hits_.fetch_add(1, std::memory_order_relaxed);
    return *entry;
  }
  // Compile outside the map's lock: other structures proceed; the same structure waits here once.
  std::lock_guard lock(entry->mutex);
  if (entry->ready.load(std::memory_order_relaxed)) {
    memory_hits_.fetch_add(1, std::memory_order_relaxed);
    return *entry;
  }
  const std::string name = cuda_kernel_name(key);
  const std::string source = generate_cuda_source(program, layout, name);
  if (std::optional<CompiledProgram> stored = read_disk(source, arch, name)) {
    entry->kernel = CachedKernel{name, std::move(*stored)};
    disk_hits_.fetch_add(1, std::memory_order_relaxed);
  } else {
    CompiledProgram compiled = compile_to_ptx(source, name, arch);
    compiles_.fetch_add(1, std::memory_order_relaxed);
    write_disk(source, name, compiled);
    entry->kernel = CachedKernel{name, std::move(compiled)};
  }
  entry->ready.store(true, std::memory_order_release);
  return *entry;
}

const CachedKernel& FusedKernelCache::get(const std::string& key, int arch, const kernels::FusedProgram& program,
                                          const kernels::FusedLayout& layout) {
  return ready_entry(key, arch, program, layout).kernel;
}

const CachedKernel& FusedKernelCache::get(const kernels::FusedProgram& program, const kernels::FusedLayout& layout,
                                          int arch) {
  return get(kernels::structure_key(program, layout), arch, program, layout);
}

cudaKernel_t FusedKernelCache::kernel(const std::string& key, int arch, const kernels::FusedProgram& program,
                                      const kernels::FusedLayout& layout) {
  Entry& entry = ready_entry(key, arch, program, layout);
  if (cudaKernel_t handle = entry.handle.load(std::memory_order_acquire)) return handle;
  std::lock_guard lock(entry.mutex);
  if (cudaKernel_t handle = entry.handle.load(std::memory_order_relaxed)) return handle;
  const CompiledProgram& binary = entry.kernel.binary;
  cudaLibrary_t library = nullptr;
  cudaError_t err = cudaErrorInvalidValue;
  if (!binary.cubin.empty())
    err = cudaLibraryLoadData(&library, binary.cubin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0);
  if (err != cudaSuccess) {
    // No CUBIN, or one the driver cannot run: the PTX (NUL-terminated text), which the driver JITs.
    (void)cudaGetLastError();
    DEFER_CUDA_CHECK(cudaLibraryLoadData(&library, binary.ptx.c_str(), nullptr, nullptr, 0, nullptr, nullptr, 0));
  }
  cudaKernel_t handle = nullptr;
  err = cudaLibraryGetKernel(&handle, library, entry.kernel.name.c_str());
  if (err != cudaSuccess) {
    (void)cudaLibraryUnload(library);
    (void)cudaGetLastError();
    throw_cuda_error(err, "cudaLibraryGetKernel", __FILE__, __LINE__);
  }
  entry.library = library;
  entry.handle.store(handle, std::memory_order_release);
  return handle;
}

}  // namespace defer::detail
