#pragma once
// Small helpers shared by the test suites.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <defer/defer.hpp>

#include "runtime/cpu/cpu_stream.hpp"

namespace defer::testing {

// Random values in [lo, hi) that are never zero, so that a missing write cannot pass as a result.
inline std::vector<float> random_values(std::size_t n, unsigned seed, float lo = -4.f, float hi = 4.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) {
    do x = dist(gen);
    while (x == 0.f);
  }
  return v;
}

// Queues a task on a CPU stream (the CPU backend's kernel launch).
inline void enqueue(const Stream& s, std::function<void()> task) { detail::enqueue_cpu(s.impl(), std::move(task)); }

// Keeps a CPU stream busy for `ms` milliseconds.
inline void enqueue_sleep(const Stream& s, int ms) {
  enqueue(s, [ms] { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); });
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Sets an environment variable for the life of the object, restoring the previous value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    if (value) ::setenv(name, value, 1);
    else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_) ::setenv(name_.c_str(), old_.c_str(), 1);
    else ::unsetenv(name_.c_str());
  }

 private:
  std::string name_, old_;
  bool had_ = false;
};

#define DEFER_SKIP_WITHOUT_GPU() \
  if (!::defer::cuda_available()) GTEST_SKIP() << "no CUDA device"

}  // namespace defer::testing
