#pragma once
// Launches one op's kernel on a stream, on either backend: the only place where the graph meets
// the kernels. Counts launches in Stats and logs them when DEFER_LOG=1.
#include <vector>

#include <defer/tensor.hpp>

#include "graph/op_node.hpp"
#include "runtime/stream_impl.hpp"

namespace defer::detail {

// Allocates the output of `spec` on `stream` and queues its kernel. `out_meta` is its validated
// shape. `reason` says why it launches (for DEFER_LOG).
Tensor launch_op(const OpSpec& spec, const std::vector<Tensor>& inputs, const TensorMeta& out_meta, StreamImpl& stream,
                 const char* reason);

// Counts one queued kernel in Stats (fused: one fused from several ops), unless this thread is
// capturing a graph: replayed kernels count once, as a graph launch.
void count_launch(bool fused) noexcept;

// DEFER_LOG=1 (read once) logs every launch to stderr; tests switch it with set_launch_log.
bool launch_log_enabled() noexcept;
void set_launch_log(bool on) noexcept;

}  // namespace defer::detail
