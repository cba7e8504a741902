#pragma once
// Deferred or eager execution of tensor ops (docs/api.md section 6), per thread.
namespace defer {

enum class Mode { deferred, eager };

Mode mode();  // this thread's mode; deferred unless a ModeGuard says otherwise

class ModeGuard {  // RAII: sets this thread's mode, restores the previous one
 public:
  explicit ModeGuard(Mode m);
  ~ModeGuard();
  ModeGuard(const ModeGuard&) = delete;
  ModeGuard& operator=(const ModeGuard&) = delete;

 private:
  Mode previous_;
};

}  // namespace defer
