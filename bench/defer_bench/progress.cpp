#include "progress.hpp"

#include <cstdio>
#include <unistd.h>

namespace defer_bench {

Progress::Progress(std::size_t total) : total_(total), enabled_(isatty(STDERR_FILENO) == 1) {}

Progress::~Progress() { clear(); }

void Progress::next(const std::string& what) {
  ++done_;
  if (!enabled_) return;
  // \033[K erases the rest of the line, so a shorter label leaves nothing of the longer one.
  std::fprintf(stderr, "\r[%3zu/%zu] %s\033[K", done_, total_, what.c_str());
  std::fflush(stderr);
  shown_ = true;
}

void Progress::clear() {
  if (!shown_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  shown_ = false;
}

}  // namespace defer_bench
