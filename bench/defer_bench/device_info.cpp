#include "device_info.hpp"

#include <fstream>
#include <string>
#include <thread>

#if DEFER_BENCH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace defer_bench {
namespace {

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) break;
    const auto start = line.find_first_not_of(' ', colon + 1);
    return start == std::string::npos ? std::string() : line.substr(start);
  }
  return {};
}

}  // namespace

std::string device_name(defer::Device device) {
#if DEFER_BENCH_CUDA
  if (device.is_cuda()) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device.index()) == cudaSuccess)
      return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
  }
#endif
  if (device.is_cuda()) return device.str();
  std::string model = cpu_model();
  if (model.empty()) model = "CPU";
  return model + ", " + std::to_string(std::thread::hardware_concurrency()) + " threads";
}

}  // namespace defer_bench
