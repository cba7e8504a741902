#pragma once
// The contract's exception hierarchy (docs/api.md section 7). Bad arguments are std::invalid_argument,
// misuse of an empty Await is std::logic_error; everything that fails at run time derives from Error.
#include <cstddef>
#include <stdexcept>
#include <string>

namespace defer {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A device that is not available, or a device call that failed (the message names the call and the
// CUDA error name).
class DeviceError : public Error {
 public:
  using Error::Error;
};

// An allocation that failed even after the allocator's cache was returned to the system.
class OutOfMemory : public Error {
 public:
  OutOfMemory(const std::string& what, std::size_t requested_bytes, std::size_t free_bytes)
      : Error(what), requested_(requested_bytes), free_(free_bytes) {}
  std::size_t requested_bytes() const noexcept { return requested_; }
  std::size_t free_bytes() const noexcept { return free_; }

 private:
  std::size_t requested_;
  std::size_t free_;
};

}  // namespace defer
