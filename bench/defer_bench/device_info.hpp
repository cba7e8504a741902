#pragma once
// A human name for the device the bench ran on: the GPU's name, or the CPU's model and thread count.
#include <string>

#include <defer/device.hpp>

namespace defer_bench {

std::string device_name(defer::Device device);

}  // namespace defer_bench
