#pragma once
// Run-time compilation of CUDA C++ with NVRTC. Needs libnvrtc, not a GPU or a driver.
#include <string>
#include <vector>

namespace defer::detail {

struct CompiledProgram {
  std::string ptx;          // always present (a loader can JIT it on a newer GPU)
  std::vector<char> cubin;  // SASS for sm_arch; empty when NVRTC cannot target that architecture directly
  std::string log;          // NVRTC's log of a successful compile (warnings), usually empty
  int arch = 0;             // the sm_arch asked for (major * 10 + minor)
};

// Compiles `source` (a translation unit that needs no include path) for sm_<sm_arch>: to PTX and,
// when NVRTC supports that architecture, to a CUBIN. A newer architecture than NVRTC knows gets PTX
// for the newest one it supports (the driver JITs it). Options: -std=c++17, -default-device; never
// --use_fast_math. `name` names the program in NVRTC's messages. Throws defer::Error on failure,
// with NVRTC's log and the source with numbered lines in what(). Thread safe.
CompiledProgram compile_to_ptx(const std::string& source, const std::string& name, int sm_arch);

// NVRTC's version as "major.minor" (part of the disk cache's key).
std::string nvrtc_version();

}  // namespace defer::detail
