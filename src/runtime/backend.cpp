// The backends by device kind: the one place that knows which exist.
#include "runtime/backend.hpp"

#include <string>

#include <defer/errors.hpp>

namespace defer::detail {

Backend& backend_for(const Device& d) {
  switch (d.kind()) {
    case DeviceKind::cpu: return cpu_backend();
    case DeviceKind::cuda:
#ifdef DEFER_HAVE_CUDA
      return cuda_backend();
#else
      throw DeviceError(d.str() + ": this build of defer has no CUDA backend");
#endif
  }
  throw DeviceError(d.str() + ": no backend for this device kind");
}

}  // namespace defer::detail
