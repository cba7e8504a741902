// The defer side of test_safetensors_roundtrip.py:
//
//   safetensors_tool copy IN OUT DEVICE   load IN on DEVICE (cpu, cuda or default), save it to OUT
//   safetensors_tool write OUT DEVICE     save defer's own tensors (below) made on DEVICE to OUT
//   safetensors_tool cuda                 print "yes" when a CUDA device is usable, else "no"
//
// Errors are printed and exit 1, so that the Python side shows them.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include <defer/defer.hpp>
#include <defer/interop.hpp>

namespace {

using namespace defer;

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  return default_device();
}

// What "write" saves; test_safetensors_roundtrip.py builds the same values in torch. Every value is
// exact in its dtype, and an element's value depends on its index i (0..11) of a [3, 4] tensor.
std::map<std::string, Tensor> own_tensors(Device d) {
  std::vector<float> f32, half;
  std::vector<std::int32_t> i32;
  std::vector<std::int64_t> i64;
  std::vector<std::uint8_t> flags;
  for (int i = 0; i < 12; ++i) {
    f32.push_back(static_cast<float>(i + 1) * -0.375f);
    half.push_back(static_cast<float>(i + 1) * 0.5f);
    i32.push_back((i + 1) * -123457);
    i64.push_back((i + 1) * 1000000000000LL + 7);
    flags.push_back(i % 3 != 0);
  }
  std::map<std::string, Tensor> out;
  out["own_f32"] = from_host(f32, {3, 4}, d);
  out["own_i32"] = from_host(i32, {3, 4}, d);
  out["own_i64"] = from_host(i64, {3, 4}, d);
  out["own_bool"] = from_host(flags, {3, 4}, d);
  out["own_f16"] = wait(to(from_host(half, {3, 4}, d), DType::f16));
  out["own_bf16"] = wait(to(from_host(half, {3, 4}, d), DType::bf16));
  out["own_transposed"] = wait(transpose(out["own_f32"]));  // a strided view: saved as its elements
  out["own_scalar"] = from_host(std::vector<float>{2.5f}, {}, d);
  out["own_empty"] = from_host(std::vector<std::int64_t>{}, {0, 2}, d);
  return out;
}

int run(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  if (command == "cuda" && argc == 2) {
    std::printf("%s\n", cuda_available() ? "yes" : "no");
    return 0;
  }
  if (command == "copy" && argc == 5) {
    const Device d = parse_device(argv[4]);
    const auto tensors = load_safetensors(argv[2], d);
    save_safetensors(argv[3], tensors);
    std::printf("copied %zu tensors through %s\n", tensors.size(), d.str().c_str());
    return 0;
  }
  if (command == "write" && argc == 4) {
    const Device d = parse_device(argv[3]);
    save_safetensors(argv[2], own_tensors(d));
    std::printf("wrote defer's tensors from %s\n", d.str().c_str());
    return 0;
  }
  std::fprintf(stderr, "usage: safetensors_tool copy IN OUT DEVICE | write OUT DEVICE | cuda\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "safetensors_tool: %s\n", e.what());
    return 1;
  }
}
