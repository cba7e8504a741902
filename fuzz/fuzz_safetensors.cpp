// libFuzzer target: the input is a safetensors file (src/interop/safetensors_format.hpp). The parser
// must accept it or throw defer::Error; anything else (a crash, a sanitizer report, another exception,
// an allocation over -rss_limit_mb) is a finding. An accepted file must satisfy every promise of the
// layout, and it is then loaded for real on the CPU (memory-mapped, through a memfd so no disk is
// touched): each tensor must hold exactly its bytes of the input.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <defer/defer.hpp>
#include <defer/interop.hpp>

#include "interop/safetensors_format.hpp"

namespace {

namespace format = defer::detail::safetensors;

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "defer fuzz_safetensors: %s\n", what.c_str());
  std::abort();
}

// What parse() promises of a file it accepts.
void check_layout(const format::Layout& layout, std::size_t size) {
  if (layout.data_start < 8 || layout.data_start + layout.data_size != size) finding("data section outside the file");
  for (std::size_t i = 0; i < layout.entries.size(); ++i) {
    const format::Entry& e = layout.entries[i];
    if (i > 0 && !(layout.entries[i - 1].name < e.name)) finding("names not sorted and unique at '" + e.name + "'");
    int64_t numel = 1;
    for (int64_t extent : e.shape) {
      if (extent < 0 || __builtin_mul_overflow(numel, extent, &numel)) finding("bad shape of '" + e.name + "'");
    }
    if (numel != e.numel) finding("numel of '" + e.name + "'");
    if (e.begin > e.end || e.end > layout.data_size) finding("range of '" + e.name + "' outside the data");
    if (e.end - e.begin != static_cast<std::uint64_t>(numel) * defer::dtype_size(e.dtype)) finding("size of '" + e.name + "'");
    for (std::size_t j = 0; j < i; ++j) {
      const format::Entry& o = layout.entries[j];
      if (e.begin < e.end && o.begin < o.end && e.begin < o.end && o.begin < e.end)
        finding("'" + o.name + "' and '" + e.name + "' overlap");
    }
  }
}

// Loads the accepted file through load_safetensors and compares every tensor with its bytes.
void check_load(const format::Layout& layout, const std::uint8_t* data, std::size_t size) {
  const int fd = ::memfd_create("fuzz_safetensors", MFD_CLOEXEC);
  if (fd < 0) return;  // no memfd here: the parser's checks above still ran
  if (::write(fd, data, size) != static_cast<ssize_t>(size)) {
    ::close(fd);
    return;
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  std::map<std::string, defer::Tensor> tensors;
  try {
    tensors = defer::load_safetensors(path, defer::Device::cpu());
  } catch (const std::exception& e) {
    finding(std::string("parse() accepted a file that load_safetensors refused: ") + e.what());
  }
  ::close(fd);  // the tensors hold the mapping, not the descriptor
  defer::current_stream(defer::Device::cpu()).synchronize();  // misaligned tensors are copies queued on it
  if (tensors.size() != layout.entries.size()) finding("load returned a different number of tensors");
  for (const format::Entry& e : layout.entries) {
    const defer::Tensor& t = tensors.at(e.name);
    if (t.dtype() != e.dtype || t.shape() != e.shape || !t.is_contiguous()) finding("tensor '" + e.name + "' differs");
    if (e.numel > 0 && std::memcmp(t.data_ptr(), data + layout.data_start + e.begin, e.end - e.begin) != 0)
      finding("tensor '" + e.name + "' holds other bytes");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  format::Layout layout;
  try {
    layout = format::parse({data, size}, "fuzz input");
  } catch (const defer::Error&) {
    return 0;  // refused, as most random inputs are
  }
  check_layout(layout, size);
  check_load(layout, data, size);
  return 0;
}
