#include "cuda/fused/nvrtc_compiler.hpp"

#include <nvrtc.h>

#include <algorithm>
#include <cstdio>
#include <string_view>

#include <defer/errors.hpp>

namespace defer::detail {
namespace {

// RAII over nvrtcProgram.
class NvrtcProgram {
 public:
  NvrtcProgram(const std::string& source, const std::string& name) {
    check(nvrtcCreateProgram(&program_, source.c_str(), name.c_str(), 0, nullptr, nullptr), "nvrtcCreateProgram");
  }
  ~NvrtcProgram() {
    if (program_ != nullptr) (void)nvrtcDestroyProgram(&program_);
  }
  NvrtcProgram(const NvrtcProgram&) = delete;
  NvrtcProgram& operator=(const NvrtcProgram&) = delete;
  nvrtcProgram get() const noexcept { return program_; }

  static void check(nvrtcResult r, const char* call) {
    if (r != NVRTC_SUCCESS) throw Error(std::string("defer: ") + call + " failed: " + nvrtcGetErrorString(r));
  }

 private:
  nvrtcProgram program_ = nullptr;
};

std::string program_log(nvrtcProgram program) {
  std::size_t size = 0;
  if (nvrtcGetProgramLogSize(program, &size) != NVRTC_SUCCESS || size == 0) return {};
  std::string log(size, '\0');
  if (nvrtcGetProgramLog(program, log.data()) != NVRTC_SUCCESS) return {};
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  return log;
}

std::string numbered(const std::string& source) {
  std::string out;
  out.reserve(source.size() + source.size() / 8);
  int number = 1;
  std::size_t begin = 0;
  while (begin < source.size()) {
    std::size_t end = source.find('\n', begin);
    if (end == std::string::npos) end = source.size();
    char prefix[16];
    std::snprintf(prefix, sizeof prefix, "%5d | ", number++);
    out += prefix;
    out.append(source, begin, end - begin);
    out += '\n';
    begin = end + 1;
  }
  return out;
}

// The architectures this NVRTC can compile SASS for, ascending.
const std::vector<int>& supported_archs() {
  static const std::vector<int> archs = [] {
    std::vector<int> list;
    int count = 0;
    if (nvrtcGetNumSupportedArchs(&count) == NVRTC_SUCCESS && count > 0) {
      list.resize(static_cast<std::size_t>(count));
      if (nvrtcGetSupportedArchs(list.data()) != NVRTC_SUCCESS) list.clear();
    }
    std::sort(list.begin(), list.end());
    return list;
  }();
  return archs;
}

// The --gpu-architecture value for sm_arch: sm_XX (PTX and CUBIN) when NVRTC supports it, else
// compute_YY (PTX only) for the newest supported YY below it, which the driver JITs.
std::string arch_option(int sm_arch) {
  const std::vector<int>& archs = supported_archs();
  if (archs.empty() || std::binary_search(archs.begin(), archs.end(), sm_arch))
    return "--gpu-architecture=sm_" + std::to_string(sm_arch);
  const auto below = std::upper_bound(archs.begin(), archs.end(), sm_arch);
  if (below == archs.begin())
    throw Error("defer: NVRTC " + nvrtc_version() + " cannot compile for sm_" + std::to_string(sm_arch) +
                " (the oldest architecture it supports is sm_" + std::to_string(archs.front()) + ")");
  return "--gpu-architecture=compute_" + std::to_string(*(below - 1));
}

}  // namespace

std::string nvrtc_version() {
  int major = 0, minor = 0;
  if (nvrtcVersion(&major, &minor) != NVRTC_SUCCESS) return "unknown";
  return std::to_string(major) + "." + std::to_string(minor);
}

CompiledProgram compile_to_ptx(const std::string& source, const std::string& name, int sm_arch) {
  const std::string arch = arch_option(sm_arch);
  NvrtcProgram program(source, name + ".cu");
  // No --use_fast_math: the fused kernels must round like the unfused ones (IEEE division and
  // square root, denormals kept).
  const char* options[] = {"-std=c++17", arch.c_str(), "-default-device"};
  const nvrtcResult result =
      nvrtcCompileProgram(program.get(), static_cast<int>(sizeof options / sizeof options[0]), options);
  CompiledProgram compiled;
  compiled.arch = sm_arch;
  compiled.log = program_log(program.get());
  if (result != NVRTC_SUCCESS) {
    throw Error("defer: NVRTC " + nvrtc_version() + " failed to compile '" + name + "' (" + arch + "): " +
                nvrtcGetErrorString(result) + "\n--- NVRTC log ---\n" + compiled.log + "\n--- source ---\n" +
                numbered(source));
  }
  std::size_t size = 0;
  NvrtcProgram::check(nvrtcGetPTXSize(program.get(), &size), "nvrtcGetPTXSize");
  compiled.ptx.assign(size, '\0');
  NvrtcProgram::check(nvrtcGetPTX(program.get(), compiled.ptx.data()), "nvrtcGetPTX");
  while (!compiled.ptx.empty() && compiled.ptx.back() == '\0') compiled.ptx.pop_back();  // kept as text
  size = 0;
  if (nvrtcGetCUBINSize(program.get(), &size) == NVRTC_SUCCESS && size > 0) {
    compiled.cubin.resize(size);
    NvrtcProgram::check(nvrtcGetCUBIN(program.get(), compiled.cubin.data()), "nvrtcGetCUBIN");
  }
  return compiled;
}

}  // namespace defer::detail
