// Host memory for the CPU backend: 64-byte aligned (one cache line, room for any vector load).
#include <sys/sysinfo.h>
#include <unistd.h>

#include <new>

#include "runtime/system_memory.hpp"

namespace defer::detail {
namespace {

constexpr std::align_val_t kAlignment{64};

class CpuSystemMemory final : public SystemMemory {
 public:
  void* allocate(std::size_t bytes) noexcept override {
    // A request larger than all RAM and swap can never succeed: refuse it without asking malloc,
    // which under sanitizers or overcommit settings may abort or pretend instead of failing.
    struct sysinfo info {};
    if (sysinfo(&info) == 0) {
      const auto limit = (static_cast<unsigned long long>(info.totalram) + info.totalswap) * info.mem_unit;
      if (bytes > limit) return nullptr;
    }
    return ::operator new(bytes, kAlignment, std::nothrow);
  }
  void deallocate(void* p, std::size_t) noexcept override { ::operator delete(p, kAlignment); }
  std::size_t free_bytes() noexcept override {
    const long pages = sysconf(_SC_AVPHYS_PAGES);
    const long page_size = sysconf(_SC_PAGESIZE);
    return pages > 0 && page_size > 0 ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(page_size) : 0;
  }
};

}  // namespace

std::unique_ptr<SystemMemory> make_cpu_system_memory() { return std::make_unique<CpuSystemMemory>(); }

}  // namespace defer::detail
