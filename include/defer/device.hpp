#pragma once
// Devices (docs/api.md section 1). A Device is a plain value naming where memory lives and work runs.
#include <string>

namespace defer {

enum class DeviceKind { cpu, cuda };

class Device {
 public:
  static Device cpu() noexcept { return Device(DeviceKind::cpu, 0); }
  // Names CUDA device `index`. Throws std::invalid_argument for index < 0, and DeviceError for an
  // index that cannot exist on this machine (index >= the number of CUDA devices, counting at
  // least one so that code can always name "the GPU", cuda:0). Using an unavailable device
  // (creating a stream or a tensor on it) throws DeviceError.
  static Device cuda(int index = 0);

  DeviceKind kind() const noexcept { return kind_; }
  int index() const noexcept { return index_; }
  bool is_cpu() const noexcept { return kind_ == DeviceKind::cpu; }
  bool is_cuda() const noexcept { return kind_ == DeviceKind::cuda; }
  std::string str() const;  // "cpu", "cuda:0"

  friend bool operator==(const Device& a, const Device& b) noexcept {
    return a.kind_ == b.kind_ && a.index_ == b.index_;
  }

 private:
  Device(DeviceKind kind, int index) noexcept : kind_(kind), index_(index) {}
  DeviceKind kind_;
  int index_;
};

// True when a CUDA device is usable at run time. Probed once (cudaGetDeviceCount) and cached; after
// a failed probe the runtime makes no other CUDA call. Always false in a CPU-only build.
bool cuda_available();
// Number of usable CUDA devices (0 when cuda_available() is false).
int cuda_device_count();
// DEFER_DEVICE=cpu|cuda|cuda:N when set (an unavailable CUDA device throws DeviceError, a malformed
// value std::invalid_argument); else cuda:0 when available; else cpu.
Device default_device();

}  // namespace defer
