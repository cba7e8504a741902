// The CUDA strided copy (kernels/strided_copy.hpp): one thread per element of the collapsed layout,
// in destination order. The layout travels by value as the kernel's argument. A transposing copy
// (the inner dims of source and destination differ) goes through a shared-memory tile so that both
// the reads and the writes are coalesced; every other copy reads and writes rows in order.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda/copy.hpp"
#include "runtime/cuda/cuda_check.hpp"

namespace defer::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 32;

template <class Index>
struct DeviceLayout {
  int ndim;
  Index shape[kMaxDims], src[kMaxDims], dst[kMaxDims];
};

template <class E, class Index>
__global__ void copy_kernel(DeviceLayout<Index> l, const E* __restrict__ src, E* __restrict__ dst, Index n) {
  const Index step = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index e = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += step) {
    Index rest = e, so = 0, dof = 0;
    for (int d = l.ndim - 1; d >= 0; --d) {
      const Index i = rest % l.shape[d];
      rest /= l.shape[d];
      so += i * l.src[d];
      dof += i * l.dst[d];
    }
    dst[dof] = src[so];
  }
}

// A copy whose source is contiguous along dim `a` and destination along dim `b` (the last dim):
// tiles of [32 along a, 32 along b] through shared memory. Other dims index the tile's batch.
template <class E>
__global__ void transpose_copy_kernel(DeviceLayout<long long> l, int a, const E* __restrict__ src, E* __restrict__ dst,
                                      long long batches) {
  __shared__ E tile[kTile][kTile + 1];
  const int b = l.ndim - 1;
  const long long na = l.shape[a], nb = l.shape[b];
  const long long tiles_a = (na + kTile - 1) / kTile, tiles_b = (nb + kTile - 1) / kTile;
  for (long long t = blockIdx.x; t < batches * tiles_a * tiles_b; t += gridDim.x) {
    long long rest = t / (tiles_a * tiles_b);
    const long long ta = (t / tiles_b) % tiles_a, tb = t % tiles_b;
    long long so = 0, dof = 0;
    for (int d = l.ndim - 1; d >= 0; --d) {  // the batch offset, over every dim but a and b
      if (d == a || d == b) continue;
      const long long i = rest % l.shape[d];
      rest /= l.shape[d];
      so += i * l.src[d];
      dof += i * l.dst[d];
    }
    // Read: consecutive threads walk along a (the source's contiguous dim).
    for (int r = threadIdx.y; r < kTile; r += blockDim.y) {
      const long long ib = tb * kTile + r, ia = ta * kTile + threadIdx.x;
      if (ia < na && ib < nb) tile[r][threadIdx.x] = src[so + ia * l.src[a] + ib * l.src[b]];
    }
    __syncthreads();
    // Write: consecutive threads walk along b (the destination's contiguous dim).
    for (int r = threadIdx.y; r < kTile; r += blockDim.y) {
      const long long ia = ta * kTile + r, ib = tb * kTile + threadIdx.x;
      if (ia < na && ib < nb) dst[dof + ia * l.dst[a] + ib * l.dst[b]] = tile[threadIdx.x][r];
    }
    __syncthreads();
  }
}

template <class Index>
DeviceLayout<Index> device_layout(const CopyLayout& l) {
  DeviceLayout<Index> d{};
  d.ndim = l.ndim;
  for (int i = 0; i < l.ndim; ++i) {
    d.shape[i] = static_cast<Index>(l.shape[static_cast<std::size_t>(i)]);
    d.src[i] = static_cast<Index>(l.src[static_cast<std::size_t>(i)]);
    d.dst[i] = static_cast<Index>(l.dst[static_cast<std::size_t>(i)]);
  }
  return d;
}

// Whether every offset the copy computes fits in 32 bits (strides may be negative).
bool fits_int32(const CopyLayout& l) {
  long long n = 1, reach_src = 0, reach_dst = 0;
  for (int d = 0; d < l.ndim; ++d) {
    const auto u = static_cast<std::size_t>(d);
    n *= l.shape[u];
    reach_src += (l.shape[u] - 1) * (l.src[u] < 0 ? -l.src[u] : l.src[u]);
    reach_dst += (l.shape[u] - 1) * (l.dst[u] < 0 ? -l.dst[u] : l.dst[u]);
  }
  const long long limit = 0x7fffffffLL - 4LL * 1024 * kThreads;  // headroom for the grid-stride step
  return n < limit && reach_src < limit && reach_dst < limit;
}

template <class E>
void launch(const CopyLayout& l, const void* src, void* dst, cudaStream_t stream) {
  const std::int64_t n = l.numel();
  const auto* s = static_cast<const E*>(src);
  auto* t = static_cast<E*>(dst);
  // A transposing copy: the destination is contiguous along the last dim, the source along another.
  int a = -1;
  if (l.ndim >= 2 && l.dst[static_cast<std::size_t>(l.ndim - 1)] == 1 && l.src[static_cast<std::size_t>(l.ndim - 1)] != 1) {
    for (int d = 0; d < l.ndim - 1; ++d)
      if (l.src[static_cast<std::size_t>(d)] == 1 && l.shape[static_cast<std::size_t>(d)] >= 8) a = d;
  }
  if (a >= 0 && l.shape[static_cast<std::size_t>(l.ndim - 1)] >= 8) {
    const long long batches = n / (l.shape[static_cast<std::size_t>(a)] * l.shape[static_cast<std::size_t>(l.ndim - 1)]);
    const long long tiles = batches * ((l.shape[static_cast<std::size_t>(a)] + kTile - 1) / kTile) *
                            ((l.shape[static_cast<std::size_t>(l.ndim - 1)] + kTile - 1) / kTile);
    const unsigned blocks = static_cast<unsigned>(std::min<long long>(tiles, 1 << 16));
    transpose_copy_kernel<E><<<blocks, dim3(kTile, 8), 0, stream>>>(device_layout<long long>(l), a, s, t, batches);
    return;
  }
  const unsigned blocks = static_cast<unsigned>(std::min<std::int64_t>((n + kThreads - 1) / kThreads, 1 << 16));
  if (fits_int32(l)) copy_kernel<E, int><<<blocks, kThreads, 0, stream>>>(device_layout<int>(l), s, t, static_cast<int>(n));
  else copy_kernel<E, long long><<<blocks, kThreads, 0, stream>>>(device_layout<long long>(l), s, t, n);
}

}  // namespace

void copy_strided(std::size_t element_bytes, const CopyLayout& layout, const void* src, void* dst, cudaStream_t stream) {
  if (layout.numel() == 0) return;
  switch (element_bytes) {
    case 1: launch<std::uint8_t>(layout, src, dst, stream); break;
    case 2: launch<std::uint16_t>(layout, src, dst, stream); break;
    case 4: launch<std::uint32_t>(layout, src, dst, stream); break;
    case 8: launch<std::uint64_t>(layout, src, dst, stream); break;
    default: throw std::invalid_argument("copy: no kernel for elements of " + std::to_string(element_bytes) + " bytes");
  }
  DEFER_CUDA_CHECK(cudaGetLastError());
}

}  // namespace defer::kernels::cuda
