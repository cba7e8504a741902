#include <defer/mode.hpp>

namespace defer {
namespace {
thread_local Mode current_mode = Mode::deferred;
}

Mode mode() { return current_mode; }
ModeGuard::ModeGuard(Mode m) : previous_(current_mode) { current_mode = m; }
ModeGuard::~ModeGuard() { current_mode = previous_; }

}  // namespace defer
