// Device naming, the one-time CUDA probe and DEFER_DEVICE.
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>

#include <defer/device.hpp>
#include <defer/errors.hpp>

#include "runtime/stream_impl.hpp"
#ifdef DEFER_HAVE_CUDA
#include "runtime/cuda/cuda_stream.hpp"
#endif

namespace defer {
namespace {

struct CudaProbe {
  int count = 0;
  std::string reason;  // why no device is usable, when count == 0
};

// Probed once; the result never changes for the life of the process (a failed probe is sticky in
// the CUDA runtime anyway).
const CudaProbe& probe() {
  static const CudaProbe result = [] {
    CudaProbe p;
#ifdef DEFER_HAVE_CUDA
    p.count = detail::probe_cuda_devices(p.reason);
#else
    p.reason = "defer was built without CUDA support";
#endif
    return p;
  }();
  return result;
}

}  // namespace

Device Device::cuda(int index) {
  if (index < 0) {
    throw std::invalid_argument("Device::cuda: device index must be >= 0, got " + std::to_string(index));
  }
  // cuda:0 is always a valid name (using it on a machine without a GPU throws at use); an index past
  // the devices this machine has can never become valid.
  const int count = probe().count;
  if (index > 0 && index >= count) {
    throw DeviceError("cuda:" + std::to_string(index) + " is not available: this machine has " +
                      std::to_string(count) + " CUDA device(s)" +
                      (probe().reason.empty() ? "" : " (" + probe().reason + ")"));
  }
  return Device(DeviceKind::cuda, index);
}

std::string Device::str() const {
  return kind_ == DeviceKind::cpu ? std::string("cpu") : "cuda:" + std::to_string(index_);
}

bool cuda_available() { return probe().count > 0; }
int cuda_device_count() { return probe().count; }

namespace {

Device parse_device(std::string_view text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.substr(0, 5) == "cuda:" && text.size() > 5 && text.size() <= 9) {
    int index = 0;
    for (char c : text.substr(5)) {
      if (c < '0' || c > '9') goto bad;
      index = index * 10 + (c - '0');
    }
    return Device::cuda(index);
  }
bad:
  throw std::invalid_argument("DEFER_DEVICE='" + std::string(text) + "' is not a device: use cpu, cuda or cuda:N");
}

}  // namespace

Device default_device() {
  const char* env = std::getenv("DEFER_DEVICE");
  if (env != nullptr && *env != '\0') {
    Device d = parse_device(env);
    if (d.is_cuda()) detail::require_available(d);  // asked for explicitly: never fall back
    return d;
  }
  return cuda_available() ? Device::cuda(0) : Device::cpu();
}

namespace detail {

void require_available(Device d) {
  if (d.is_cpu()) return;
  const CudaProbe& p = probe();
  if (d.index() < p.count) return;
  throw DeviceError(d.str() + " is not available: " +
                    (p.count == 0 ? p.reason : "this machine has " + std::to_string(p.count) + " CUDA device(s)"));
}

}  // namespace detail
}  // namespace defer
