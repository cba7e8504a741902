// load_safetensors and save_safetensors (docs/api.md section 12). The format itself, and every check
// of a file's bytes, is interop/safetensors_format.*; this file does the I/O and makes the tensors.
#include <defer/interop.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <span>
#include <stdexcept>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include <defer/errors.hpp>

#include "interop/safetensors_format.hpp"
#include "runtime/copy.hpp"
#include "runtime/cpu/cpu_stream.hpp"
#include "runtime/tensor_impl.hpp"

namespace defer {

namespace {

namespace format = detail::safetensors;

std::string errno_text(int err) { return std::generic_category().message(err); }

[[noreturn]] void io_fail(const char* op, const std::string& what, const std::string& path, int err) {
  throw Error(std::string(op) + ": cannot " + what + " '" + path + "': " + errno_text(err));
}

// A file descriptor, closed exactly once.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) noexcept : fd_(fd) {}
  ~FileDescriptor() { close(); }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const noexcept { return fd_; }
  // Closes now, returning close()'s errno (0 on success): for a written file, close reports
  // write-back errors that the writes themselves may not have.
  int close() noexcept {
    if (fd_ < 0) return 0;
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

// ---- loading ----------------------------------------------------------------------------------------

// A memory mapping, unmapped exactly once, when the last owner is gone.
class Mapping {
 public:
  Mapping(void* base, std::size_t size) noexcept : base_(base), size_(size) {}
  ~Mapping() {
    if (base_) ::munmap(base_, size_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

 private:
  void* base_;
  std::size_t size_;
};

// The whole file, mapped private: copy-on-write, so writes through a loaded tensor's data pointer
// land in private pages (they never fault and never change the file). MAP_NORESERVE: a writable
// private mapping is otherwise charged in full against the commit limit, which would refuse files
// larger than memory plus swap although the tensors only read them. (Like any mapping, it cannot
// protect against the file being truncated or rewritten in place meanwhile, by another process or
// by a writer that does not replace the file as save_safetensors does: pages not yet written through
// a tensor show the new bytes, and reading vanished pages raises SIGBUS.)
std::shared_ptr<detail::Storage> map_file(const std::string& path) {
  constexpr const char* op = "load_safetensors";
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) io_fail(op, "open", path, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) io_fail(op, "stat", path, errno);
  if (!S_ISREG(st.st_mode)) throw Error(std::string(op) + ": '" + path + "' is not a regular file");
  const auto size = static_cast<std::size_t>(st.st_size);
  std::shared_ptr<detail::StreamImpl> stream = detail::current_stream_impl(Device::cpu());
  // An empty file cannot be mapped; parse() reports it as truncated.
  if (size == 0) return std::make_shared<detail::ExternalStorage>(nullptr, 0, nullptr, std::move(stream));
  void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd.get(), 0);
  if (base == MAP_FAILED) io_fail(op, "map", path, errno);
  std::shared_ptr<Mapping> mapping;
  try {
    mapping = std::make_shared<Mapping>(base, size);
  } catch (...) {  // no owner yet: unmap here
    ::munmap(base, size);
    throw;
  }
  // Unmapped when the last tensor viewing it is gone and the work queued on those tensors has
  // finished (runtime/storage.hpp): the release drops the last reference to the mapping.
  return std::make_shared<detail::ExternalStorage>(base, size, [mapping]() mutable { mapping.reset(); },
                                                   std::move(stream));
}

std::span<const unsigned char> bytes_of(const detail::Storage& s) {
  return {static_cast<const unsigned char*>(s.data()), s.nbytes()};
}

// CPU tensors view the mapping in place. The mapping starts on a page boundary, so a tensor is
// aligned for its dtype exactly when its file offset is a multiple of the element size; one that is
// not (a file whose writer did not align its data) is copied into a pool tensor, since reading a
// misaligned element is undefined behaviour. The copy is queued on the current stream like any
// write to new pool memory (the block may still be in use by earlier work on it), and the task holds
// the mapping until it has run.
Tensor load_on_cpu(const format::Entry& e, const std::shared_ptr<detail::Storage>& mapping, std::uint64_t data_start,
                   Device d) {
  const std::uint64_t offset = data_start + e.begin;
  const std::size_t element = dtype_size(e.dtype);
  Shape strides = detail::contiguous_strides(e.shape);
  if (e.numel == 0) return detail::wrap_storage(nullptr, e.shape, std::move(strides), 0, e.dtype, d);
  if (offset % element == 0)
    return detail::wrap_storage(mapping, e.shape, std::move(strides), static_cast<int64_t>(offset / element), e.dtype, d);
  detail::StreamImpl& stream = *detail::current_stream_impl(d);
  Tensor t = detail::allocate_tensor(e.shape, e.dtype, stream, "load_safetensors");
  const auto* src = static_cast<const unsigned char*>(mapping->data()) + offset;
  detail::enqueue_cpu(stream, [dst = t.data_ptr(), src, bytes = t.nbytes(), mapping] { std::memcpy(dst, src, bytes); });
  return t;
}

// Synchronizes a stream when a load is left by an exception, so that uploads already queued have
// read the mapping before it is unmapped. (The normal path synchronizes itself, to report errors.)
class SyncOnUnwind {
 public:
  explicit SyncOnUnwind(detail::StreamImpl& stream) noexcept : stream_(&stream) {}
  ~SyncOnUnwind() {
    if (!stream_) return;
    try {
      stream_->synchronize();
    } catch (...) {  // the exception in flight is the one to report
    }
  }
  SyncOnUnwind(const SyncOnUnwind&) = delete;
  SyncOnUnwind& operator=(const SyncOnUnwind&) = delete;
  void dismiss() noexcept { stream_ = nullptr; }

 private:
  detail::StreamImpl* stream_;
};

// CUDA tensors: each one allocation and one stream-ordered upload from the mapping, on the current
// stream. The mapping must stay valid until every upload has read it. cudaMemcpyAsync from pageable
// memory (a file mapping is pageable) already waits for the stream's earlier work and stages the
// bytes before it returns, so one synchronize after the last upload costs at most that upload's
// transfer; it keeps the mapping's lifetime correct without relying on the staging, which the
// driver need not do where the device can read pageable memory directly (HMM, ATS).
std::map<std::string, Tensor> load_on_cuda(const format::Layout& layout, const detail::Storage& mapping, Device d) {
  detail::StreamImpl& stream = *detail::current_stream_impl(d);
  SyncOnUnwind sync(stream);
  std::map<std::string, Tensor> out;
  const auto* base = static_cast<const unsigned char*>(mapping.data());
  for (const format::Entry& e : layout.entries) {
    Tensor t = detail::allocate_tensor(e.shape, e.dtype, stream, "load_safetensors");
    detail::copy_async(t.data_ptr(), base + layout.data_start + e.begin, t.nbytes(), stream);
    out.emplace(e.name, std::move(t));
  }
  sync.dismiss();
  stream.synchronize();
  return out;
}

// ---- saving ------------------------------------------------------------------------------------------

// Creates `path`.tmp-<pid>-<n> exclusively, with the mode open(2) would give `path` itself (0666 less
// the umask); returns its descriptor and sets `name`.
int create_next_to(const std::string& path, std::string& name) {
  static std::atomic<unsigned> counter{0};
  for (int attempt = 0;; ++attempt) {
    name = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1));
    const int fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return fd;
    if (errno != EEXIST || attempt == 100) io_fail("save_safetensors", "create a temporary file next to", path, errno);
  }
}

// A new file next to `path`, removed again unless commit() renamed it to `path`: a save that fails
// at any point leaves whatever was at `path` untouched and no stray file behind.
class TempFile {
 public:
  explicit TempFile(const std::string& path) : path_(path), fd_(create_next_to(path, temp_)) {}
  ~TempFile() {
    if (!committed_) {
      fd_.close();
      ::unlink(temp_.c_str());
    }
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write(const void* data, std::size_t bytes) {
    const auto* p = static_cast<const char*>(data);
    while (bytes > 0) {
      const ssize_t n = ::write(fd_.get(), p, bytes);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) io_fail("save_safetensors", "write", path_, errno);
      p += n;
      bytes -= static_cast<std::size_t>(n);
    }
  }
  // Makes the bytes durable, then puts them under `path` in one atomic step.
  void commit() {
    if (::fsync(fd_.get()) != 0) io_fail("save_safetensors", "write", path_, errno);
    if (const int err = fd_.close()) io_fail("save_safetensors", "write", path_, err);
    if (::rename(temp_.c_str(), path_.c_str()) != 0) io_fail("save_safetensors", "replace", path_, errno);
    committed_ = true;
  }

 private:
  std::string path_, temp_;
  FileDescriptor fd_;
  bool committed_ = false;
};

// t's elements, row-major, readable on the host: a strided tensor is gathered on its own device
// first, a CUDA one downloaded; in every case after the work queued on the current stream of its
// device (which includes t's producer) has finished.
class HostBytes {
 public:
  explicit HostBytes(const Tensor& t) {
    detail::StreamImpl& stream = *detail::current_stream_impl(t.device());
    dense_ = detail::contiguous_copy(t, stream);
    if (t.device().is_cuda()) {
      download_.resize(dense_.nbytes());
      detail::copy_async(download_.data(), dense_.data_ptr(), download_.size(), stream);
    }
    stream.synchronize();
  }
  const void* data() const { return download_.empty() ? dense_.data_ptr() : download_.data(); }
  std::size_t size() const { return dense_.nbytes(); }

 private:
  Tensor dense_;
  std::vector<unsigned char> download_;
};

}  // namespace

std::map<std::string, Tensor> load_safetensors(const std::string& path, Device d) {
  detail::require_available(d);
  const std::shared_ptr<detail::Storage> mapping = map_file(path);
  const format::Layout layout = format::parse(bytes_of(*mapping), path);
  if (d.is_cuda()) return load_on_cuda(layout, *mapping, d);
  std::map<std::string, Tensor> out;
  for (const format::Entry& e : layout.entries) out.emplace(e.name, load_on_cpu(e, mapping, layout.data_start, d));
  return out;
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors) {
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) throw std::invalid_argument("save_safetensors: tensor '" + name + "' is undefined");
    if (name == "__metadata__")
      throw std::invalid_argument("save_safetensors: '__metadata__' is the format's reserved key, not a tensor name");
  }
  // The data in the Python package's order: larger elements first, then by name. With the data
  // section starting 8-byte aligned, that places every tensor at a multiple of its element size, so
  // loading the file maps every tensor in place. The header lists the names sorted.
  std::vector<std::pair<const std::string*, const Tensor*>> order;
  order.reserve(tensors.size());
  for (const auto& [name, t] : tensors) order.emplace_back(&name, &t);
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return dtype_size(a.second->dtype()) > dtype_size(b.second->dtype());
  });

  nlohmann::json header = nlohmann::json::object();  // keys sorted; no "__metadata__" (optional)
  std::uint64_t offset = 0;
  for (const auto& [name, t] : order) {
    const std::uint64_t end = offset + t->nbytes();
    header[*name] = {{"dtype", format::format_name(t->dtype())}, {"shape", t->shape()}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::type_error& e) {  // the format's names are UTF-8
    throw std::invalid_argument(std::string("save_safetensors: a tensor name is not valid UTF-8 (") + e.what() + ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned, as the package pads it
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(static_cast<std::uint64_t>(text.size()) >> (8 * i));

  TempFile file(path);
  file.write(length, sizeof length);
  file.write(text.data(), text.size());
  for (const auto& [name, t] : order) {
    if (t->numel() == 0) continue;
    const HostBytes bytes(*t);  // one tensor at a time: the host holds at most the largest one
    file.write(bytes.data(), bytes.size());
  }
  file.commit();
}

}  // namespace defer
