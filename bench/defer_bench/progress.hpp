#pragma once
// A one-line progress indication on stderr, shown only when stderr is a terminal: redirected runs
// (CI logs, `2> file`) stay free of carriage returns.
#include <cstddef>
#include <string>

namespace defer_bench {

class Progress {
 public:
  explicit Progress(std::size_t total);  // enabled when stderr is a terminal
  ~Progress();                           // clears the line
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  void next(const std::string& what);    // "[ 3/48] what"
  void clear();

 private:
  std::size_t total_;
  std::size_t done_ = 0;
  bool enabled_;
  bool shown_ = false;
};

}  // namespace defer_bench
