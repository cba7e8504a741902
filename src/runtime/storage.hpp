#pragma once
// The bytes a Tensor views: shared by every view of them, released when the last one is gone. Most
// storage is a block of the stream-ordered pool (runtime/stream_ordered_pool.hpp: Allocation); storage
// made elsewhere (a DLPack producer's buffer, a memory-mapped file) is wrapped with the function that
// releases it.
#include <cstddef>
#include <functional>

namespace defer::detail {

class StreamImpl;

class Storage {
 public:
  Storage(void* data, std::size_t nbytes) noexcept : data_(data), nbytes_(nbytes) {}
  virtual ~Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const noexcept { return data_; }
  std::size_t nbytes() const noexcept { return nbytes_; }
  // Marks the bytes as used by work queued on `stream` (the recordStream rule). Only pool blocks
  // are ever reused; external storage is released by its owner, so there is nothing to record.
  virtual void record_use(StreamImpl&) {}

 private:
  void* data_;
  std::size_t nbytes_;
};

// Storage made elsewhere: `release` runs exactly once, when the last sharer is gone.
class ExternalStorage final : public Storage {
 public:
  ExternalStorage(void* data, std::size_t nbytes, std::function<void()> release)
      : Storage(data, nbytes), release_(std::move(release)) {}
  ~ExternalStorage() override {
    if (release_) release_();
  }

 private:
  std::function<void()> release_;
};

}  // namespace defer::detail
