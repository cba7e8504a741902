#pragma once
// The bytes a Tensor views: shared by every view of them, released when the last one is gone. Most
// storage is a block of the stream-ordered pool (runtime/stream_ordered_pool.hpp: Allocation); storage
// made elsewhere is an ExternalStorage, released by its owner's function.
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

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

// Storage made elsewhere (a DLPack producer's buffer, a memory-mapped file), released by `release`
// exactly once. Its owner may reuse the memory at once, so, like the allocator's blocks, it is
// released only when the last tensor viewing it is gone AND the work queued on it has finished: the
// work of `stream` (the stream current when it was wrapped, where ops on it are queued unless the
// caller says otherwise) and of every stream record_use marks (a wait on another stream,
// record_stream). When that work is still running, the release runs later on a queue of the
// runtime's own; the host never blocks.
class ExternalStorage final : public Storage {
 public:
  ExternalStorage(void* data, std::size_t nbytes, std::function<void()> release, std::shared_ptr<StreamImpl> stream);
  ~ExternalStorage() override;
  void record_use(StreamImpl& stream) override;

 private:
  void release_after_running_work();

  std::function<void()> release_;
  std::mutex mutex_;
  std::vector<std::shared_ptr<StreamImpl>> streams_;  // [0]: current when wrapped
};

}  // namespace defer::detail
