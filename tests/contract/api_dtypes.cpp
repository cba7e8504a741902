// API.md section 9 (data types, casts, comparisons, indexing): every name once, on the CPU. Surface only.
// A copy of ../shared/contract/api_dtypes.cpp with one change: the contract's `embedding(x, ids)` looks
// up row 2 of a [2, 3] weight, which API.md section 9 makes an out-of-range index (the wait throws
// std::out_of_range, and this program would abort); here it is `embedding(x, ids32)` (row 1). Raised
// in the note; tests/test_dtypes.cpp checks that embedding(x, ids) throws as API.md says.
#include <defer/defer.hpp>

#include <cstdint>
#include <cstdio>
#include <vector>

using namespace defer;

int main() {
  Device cpu = Device::cpu();
  for (DType t : {DType::f32, DType::i32, DType::f16, DType::bf16, DType::i64, DType::boolean})
    std::printf("%s:%zu ", dtype_name(t), dtype_size(t));
  Tensor x = from_vector({-1, 2, 3, 4, 5, 6}, {2, 3}, cpu);
  Tensor ids = from_host<int64_t>({2, 0}, {2}, cpu);
  Tensor ids32 = from_host<int32_t>({1}, {1}, cpu);
  Tensor m = from_host<uint8_t>({1, 0, 1}, {3}, cpu);
  Tensor r = arange(6, DType::i64, cpu);
  Await<Tensor> h = to(x, DType::f16), bh = to(x, DType::bf16);
  std::vector<Await<Tensor>> v{h, bh, eq(x, x), ne(x, x), lt(x, x), le(x, x), gt(x, x), ge(x, x),
                               eq(x, 1.f), ne(x, 1.f), lt(x, 1.f), le(x, 1.f), gt(x, 1.f), ge(x, 1.f),
                               where(gt(x, 2.f), x, -x), masked_fill(x, m, 0.f), index_select(x, 1, ids),
                               index_select(x, 0, ids32), embedding(x, ids32), rsqrt(abs(x)), erf(x), pow(x, 2.f),
                               clamp(x, 0.f, 4.f), min(x, 1), argmax(x, 1, true), add(h, h)};
  for (auto& t : v) wait(t);
  [[maybe_unused]] std::vector<int64_t> ri = to_host<int64_t>(r);
  [[maybe_unused]] std::vector<uint8_t> mi = to_host<uint8_t>(m);
  std::printf("\napi dtypes ok\n");
  return 0;
}
