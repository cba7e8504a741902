#pragma once
// Compiled fused kernels, cached in memory by (structure key, architecture) and on disk so that a
// second process starts warm. Compiling and the disk cache need no GPU; loading a kernel does.
//
// Disk cache: one file per kernel in DEFER_CACHE_DIR, else $XDG_CACHE_HOME/defer, else
// ~/.cache/defer. The file name is a hash of the generated source (which embeds
// kernels/elementwise_math.h and spells every op and dtype the program uses), the NVRTC version,
// the architecture and the file format; the file repeats all of them and a checksum, so a colliding,
// stale, truncated or corrupt file is ignored (and rewritten), and a kernel compiled from other math
// or for a renumbered op is never loaded. Files are written to a
// temporary name in the same directory and renamed, so a reader never sees half a file. A directory
// that cannot be created disables the disk cache, a failed write disables writing: silently.
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "fusion/fused_program.hpp"
#include "cuda/fused/nvrtc_compiler.hpp"

namespace defer::detail {

struct KernelCacheCounters {
  std::uint64_t compiles = 0;     // NVRTC compilations
  std::uint64_t memory_hits = 0;  // lookups answered by a kernel already in memory
  std::uint64_t disk_hits = 0;    // kernels read from the disk cache instead of compiled
  std::uint64_t disk_writes = 0;  // kernels written to the disk cache
};

struct CachedKernel {
  std::string name;  // the kernel's symbol in the binary
  CompiledProgram binary;
};

class FusedKernelCache {
 public:
  // The disk cache directory from the environment (read now), created if missing.
  FusedKernelCache();
  // An explicit disk cache directory, created if missing; an empty path: no disk cache.
  explicit FusedKernelCache(const std::filesystem::path& disk_dir);
  // Unloads the libraries this cache loaded: only after every kernel launched from it finished.
  ~FusedKernelCache();
  FusedKernelCache(const FusedKernelCache&) = delete;
  FusedKernelCache& operator=(const FusedKernelCache&) = delete;

  // The process's cache. Never destroyed, so that no CUDA call runs during static destruction.
  static FusedKernelCache& global();

  // The compiled kernel for the program's structure on sm_<arch>: from memory, else from disk,
  // else compiled (and written to disk). Throws std::invalid_argument for a malformed program
  // (kernels::validate), defer::Error when NVRTC fails. The reference stays valid as long as the
  // cache. `key` must be kernels::structure_key(program, layout).
  const CachedKernel& get(const std::string& key, int arch, const kernels::FusedProgram& program,
                          const kernels::FusedLayout& layout);
  const CachedKernel& get(const kernels::FusedProgram& program, const kernels::FusedLayout& layout, int arch);

  // get() and, once per entry, load the binary into the CUDA runtime (cudaLibraryLoadData; CUBIN,
  // else PTX): the handle can be launched on every device of that architecture. Needs a GPU;
  // throws defer::DeviceError when loading fails.
  cudaKernel_t kernel(const std::string& key, int arch, const kernels::FusedProgram& program,
                      const kernels::FusedLayout& layout);

  KernelCacheCounters counters() const noexcept;
  // The disk cache directory; empty when there is none.
  const std::filesystem::path& disk_dir() const noexcept { return disk_dir_; }
  // Where the kernel for (key, arch) lives (or would live) on disk; empty without a disk cache.
  std::filesystem::path disk_file(const std::string& source, int arch) const;

  // The directory the default constructor uses, from the environment; empty when none can be named.
  static std::filesystem::path default_disk_dir();

 private:
  struct Entry;
  Entry& ready_entry(const std::string& key, int arch, const kernels::FusedProgram& program,
                     const kernels::FusedLayout& layout);
  std::optional<CompiledProgram> read_disk(const std::string& source, int arch, const std::string& name) const;
  void write_disk(const std::string& source, const std::string& name, const CompiledProgram& binary);

  std::filesystem::path disk_dir_;
  std::atomic<bool> disk_writable_{true};
  mutable std::mutex mutex_;  // guards entries_ (not the entries, which have their own)
  std::unordered_map<std::string, std::unique_ptr<Entry>> entries_;
  std::atomic<std::uint64_t> compiles_{0}, memory_hits_{0}, disk_hits_{0}, disk_writes_{0};
};

}  // namespace defer::detail
