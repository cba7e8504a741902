// Devices, the CUDA probe and DEFER_DEVICE (docs/api.md section 1).
#include <gtest/gtest.h>

#include <stdexcept>

#include <defer/defer.hpp>

#include "test_util.hpp"

using namespace defer;
using defer::testing::ScopedEnv;

TEST(Device, CpuNamesItself) {
  Device d = Device::cpu();
  EXPECT_EQ(d.kind(), DeviceKind::cpu);
  EXPECT_EQ(d.index(), 0);
  EXPECT_EQ(d.str(), "cpu");
  EXPECT_TRUE(d == Device::cpu());
}

TEST(Device, CudaZeroIsAlwaysNameable) {
  Device d = Device::cuda();
  EXPECT_EQ(d.kind(), DeviceKind::cuda);
  EXPECT_EQ(d.index(), 0);
  EXPECT_EQ(d.str(), "cuda:0");
  EXPECT_FALSE(d == Device::cpu());
  EXPECT_TRUE(d == Device::cuda(0));
}

TEST(Device, NegativeIndexIsInvalidArgument) {
  EXPECT_THROW(Device::cuda(-1), std::invalid_argument);
  try {
    Device::cuda(-3);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("-3"), std::string::npos) << e.what();
  }
}

TEST(Device, MissingIndexIsDeviceErrorNamingTheDevice) {
  const int past = cuda_device_count() + 7;
  try {
    Device::cuda(past);
    FAIL() << "no DeviceError";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:" + std::to_string(past)), std::string::npos) << e.what();
  }
}

TEST(Device, ProbeIsStableAndConsistent) {
  const bool first = cuda_available();
  EXPECT_EQ(first, cuda_available());
  EXPECT_EQ(first, cuda_device_count() > 0);
}

TEST(Device, UsingCudaWithoutGpuThrowsDeviceErrorNotCrash) {
  if (cuda_available()) GTEST_SKIP() << "this machine has a GPU";
  EXPECT_THROW(Stream::create(Device::cuda(0)), DeviceError);
  EXPECT_THROW(current_stream(Device::cuda(0)), DeviceError);
  EXPECT_THROW(empty({4}, DType::f32, Device::cuda(0)), DeviceError);
  EXPECT_THROW(from_vector({1.f, 2.f}, {2}, Device::cuda(0)), DeviceError);
  EXPECT_THROW(memory_stats(Device::cuda(0)), DeviceError);
  try {
    empty({4}, DType::f32, Device::cuda(0));
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:0"), std::string::npos) << e.what();
  }
  // The runtime stays usable.
  EXPECT_EQ(to_vector(from_vector({1.f, 2.f}, {2}, Device::cpu())), (std::vector<float>{1.f, 2.f}));
}

TEST(DefaultDevice, WithoutEnvironmentPrefersCuda) {
  ScopedEnv env("DEFER_DEVICE", nullptr);
  EXPECT_EQ(default_device(), cuda_available() ? Device::cuda(0) : Device::cpu());
}

TEST(DefaultDevice, EmptyVariableCountsAsUnset) {
  ScopedEnv env("DEFER_DEVICE", "");
  EXPECT_EQ(default_device(), cuda_available() ? Device::cuda(0) : Device::cpu());
}

TEST(DefaultDevice, CpuFromEnvironment) {
  ScopedEnv env("DEFER_DEVICE", "cpu");
  EXPECT_EQ(default_device(), Device::cpu());
}

TEST(DefaultDevice, CudaFromEnvironmentNeverFallsBack) {
  for (const char* value : {"cuda", "cuda:0"}) {
    ScopedEnv env("DEFER_DEVICE", value);
    if (cuda_available()) {
      EXPECT_EQ(default_device(), Device::cuda(0)) << value;
    } else {
      EXPECT_THROW(default_device(), DeviceError) << value;
    }
  }
}

TEST(DefaultDevice, MissingCudaIndexFromEnvironmentIsDeviceError) {
  const std::string value = "cuda:" + std::to_string(cuda_device_count() + 3);
  ScopedEnv env("DEFER_DEVICE", value.c_str());
  EXPECT_THROW(default_device(), DeviceError);
}

TEST(DefaultDevice, MalformedValueIsInvalidArgumentNamingTheVariable) {
  for (const char* value : {"gpu", "cuda:", "cuda:x", "CPU", "cuda:-1", "cpu:0", "cuda:123456789012"}) {
    ScopedEnv env("DEFER_DEVICE", value);
    try {
      default_device();
      FAIL() << value << " accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("DEFER_DEVICE"), std::string::npos) << e.what();
    }
  }
}

TEST(DefaultDevice, DefaultArgumentsFollowTheEnvironment) {
  ScopedEnv env("DEFER_DEVICE", "cpu");
  EXPECT_EQ(empty({3}).device(), Device::cpu());
  EXPECT_EQ(current_stream().device(), Device::cpu());
}

TEST(Errors, HierarchyMatchesTheContract) {
  static_assert(std::is_base_of_v<std::runtime_error, Error>);
  static_assert(std::is_base_of_v<Error, DeviceError>);
  static_assert(std::is_base_of_v<Error, OutOfMemory>);
  OutOfMemory oom("out of memory", 100, 50);
  EXPECT_EQ(oom.requested_bytes(), 100u);
  EXPECT_EQ(oom.free_bytes(), 50u);
}
