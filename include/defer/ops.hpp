#pragma once
// Tensor ops, deferred (docs/api.md section 5). Each op checks shapes, dtypes and devices when it is
// called (std::invalid_argument naming the op and the shapes) and returns an Await<Tensor>. In the
// default deferred mode nothing is launched until a result is waited; the wait then plans the
// pending graph that result needs and launches it on the wait's stream. In eager mode
// (ModeGuard(Mode::eager)) each op launches its kernel at once and returns a ready Await.
//
// Dtypes (docs/api.md section 9): math ops take f32, f16 or bf16 and compute in f32, rounding once when
// they store; the data operands of one op share one dtype; a scalar takes the tensor's dtype.
// Comparisons, where, masked_fill, casts, transpose, index_select, embedding and to(Device) take
// every dtype; on i32/i64 data comparisons, where and masked_fill are exact. An operand whose shape
// is not known before it runs (an awaitable() that is still pending) is checked when the graph runs.
#include <string>
#include <vector>

#include <defer/await.hpp>
#include <defer/device.hpp>
#include <defer/mode.hpp>
#include <defer/tensor.hpp>

namespace defer {

using TensorAwait = Await<Tensor>;

// Element-wise, binary with NumPy broadcasting.
TensorAwait add(const TensorAwait& a, const TensorAwait& b);
TensorAwait sub(const TensorAwait& a, const TensorAwait& b);
TensorAwait mul(const TensorAwait& a, const TensorAwait& b);
TensorAwait div(const TensorAwait& a, const TensorAwait& b);
TensorAwait maximum(const TensorAwait& a, const TensorAwait& b);
TensorAwait minimum(const TensorAwait& a, const TensorAwait& b);
// Element-wise with a scalar on the right.
TensorAwait add(const TensorAwait& a, float s);
TensorAwait sub(const TensorAwait& a, float s);
TensorAwait mul(const TensorAwait& a, float s);
TensorAwait div(const TensorAwait& a, float s);
TensorAwait maximum(const TensorAwait& a, float s);
TensorAwait minimum(const TensorAwait& a, float s);
TensorAwait pow(const TensorAwait& a, float exponent);
// min(max(a, lo), hi) as torch.clamp: NaN stays NaN, lo > hi gives hi.
TensorAwait clamp(const TensorAwait& a, float lo, float hi);
// Element-wise, unary. gelu is exact (x * Phi(x)); gelu_tanh is the tanh approximation.
TensorAwait neg(const TensorAwait& a);
TensorAwait abs(const TensorAwait& a);
TensorAwait exp(const TensorAwait& a);
TensorAwait log(const TensorAwait& a);
TensorAwait sqrt(const TensorAwait& a);
TensorAwait tanh(const TensorAwait& a);
TensorAwait sigmoid(const TensorAwait& a);
TensorAwait relu(const TensorAwait& a);
TensorAwait silu(const TensorAwait& a);
TensorAwait gelu(const TensorAwait& a);
TensorAwait gelu_tanh(const TensorAwait& a);
TensorAwait rsqrt(const TensorAwait& a);
TensorAwait erf(const TensorAwait& a);
// log(1 + exp(a)), computed without overflow.
TensorAwait softplus(const TensorAwait& a);

// Comparisons: boolean results, broadcasting; every comparison with NaN is false except ne.
TensorAwait eq(const TensorAwait& a, const TensorAwait& b);
TensorAwait ne(const TensorAwait& a, const TensorAwait& b);
TensorAwait lt(const TensorAwait& a, const TensorAwait& b);
TensorAwait le(const TensorAwait& a, const TensorAwait& b);
TensorAwait gt(const TensorAwait& a, const TensorAwait& b);
TensorAwait ge(const TensorAwait& a, const TensorAwait& b);
TensorAwait eq(const TensorAwait& a, float s);
TensorAwait ne(const TensorAwait& a, float s);
TensorAwait lt(const TensorAwait& a, float s);
TensorAwait le(const TensorAwait& a, float s);
TensorAwait gt(const TensorAwait& a, float s);
TensorAwait ge(const TensorAwait& a, float s);
// cond ? a : b element by element; cond is boolean; all three broadcast.
TensorAwait where(const TensorAwait& cond, const TensorAwait& a, const TensorAwait& b);
// a with `value` where mask (boolean, broadcast to a's shape) is true.
TensorAwait masked_fill(const TensorAwait& a, const TensorAwait& mask, float value);

// A cast: floats round to nearest even; a float to an integer truncates toward zero (NaN gives 0,
// values beyond the range saturate); i64 to i32 wraps; nonzero (NaN included) becomes true.
TensorAwait to(const TensorAwait& a, DType dtype);

// Rows of `a` along `dim` picked by a 1-D i32/i64 index: out.shape[dim] = index.numel().
// An index outside [0, extent) is found when the graph runs: the wait throws std::out_of_range.
TensorAwait index_select(const TensorAwait& a, int64_t dim, const TensorAwait& index);
// weight [V, D] rows picked by ids (i32/i64, any shape): ids.shape + [D]. Bad ids as index_select.
TensorAwait embedding(const TensorAwait& weight, const TensorAwait& ids);

// As torch.matmul: [..., m, k] x [..., k, n] -> [..., m, n] with the batch dims broadcast; a 1-D first
// operand is a row vector, a 1-D second operand a column vector (the added dim is removed again).
TensorAwait matmul(const TensorAwait& a, const TensorAwait& b);

// Views (docs/api.md section 8): the result shares the operand's storage; waiting a view of a
// materialized tensor launches nothing, and element-wise kernels read views in place. Negative dims
// count from the end; a bad dim, index or shape throws std::invalid_argument at the call, naming
// the op, the shape and the value.
// One extent may be -1. A view when the strides allow it, else a contiguous copy (one launch).
TensorAwait reshape(const TensorAwait& a, Shape shape);
// Always a view; std::invalid_argument when the strides do not allow one.
TensorAwait view(const TensorAwait& a, Shape shape);
TensorAwait permute(const TensorAwait& a, std::vector<int64_t> dims);
TensorAwait transpose(const TensorAwait& a, int64_t d0, int64_t d1);
TensorAwait transpose(const TensorAwait& a);  // the last two dims
TensorAwait unsqueeze(const TensorAwait& a, int64_t dim);
TensorAwait squeeze(const TensorAwait& a, int64_t dim);  // dim must have extent 1
// -1 keeps an extent; an extent-1 dim may grow (stride 0); new dims go in front.
TensorAwait expand(const TensorAwait& a, Shape shape);
// Python's rules: negative start/end count from the end and are clamped to the extent; step >= 1.
TensorAwait slice(const TensorAwait& a, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
TensorAwait select(const TensorAwait& a, int64_t dim, int64_t index);  // removes dim; negative index from the end
// Views of `size` along dim (the last may be shorter); size >= 1.
std::vector<TensorAwait> split(const TensorAwait& a, int64_t size, int64_t dim);
// A contiguous copy (one launch), or the same tensor when it is already contiguous.
TensorAwait contiguous(const TensorAwait& a);
// The tensors joined along dim: one dtype and device, equal extents elsewhere. Contiguous.
TensorAwait cat(const std::vector<TensorAwait>& xs, int64_t dim);
// Reductions over one dim (negative counts from the end); keepdim keeps it with extent 1.
TensorAwait sum(const TensorAwait& a, int dim, bool keepdim = false);
TensorAwait mean(const TensorAwait& a, int dim, bool keepdim = false);
TensorAwait max(const TensorAwait& a, int dim, bool keepdim = false);  // values; NaN wins
TensorAwait min(const TensorAwait& a, int dim, bool keepdim = false);  // values; NaN wins
// The index (i64) of the first largest value along dim; a NaN counts as the largest.
TensorAwait argmax(const TensorAwait& a, int dim, bool keepdim = false);
// A reduction over the only dim of a 1-D tensor without keepdim gives a 0-d tensor (shape {}).
TensorAwait softmax(const TensorAwait& a, int dim);
// Over the last dim; gamma and beta have the last dim's extent.
TensorAwait layer_norm(const TensorAwait& x, const TensorAwait& gamma, const TensorAwait& beta, float eps = 1e-5f);
// A copy on device d (the same tensor when it is already there).
TensorAwait to(const TensorAwait& a, Device d);

TensorAwait operator+(const TensorAwait& a, const TensorAwait& b);
TensorAwait operator-(const TensorAwait& a, const TensorAwait& b);
TensorAwait operator*(const TensorAwait& a, const TensorAwait& b);
TensorAwait operator/(const TensorAwait& a, const TensorAwait& b);
TensorAwait operator+(const TensorAwait& a, float s);
TensorAwait operator-(const TensorAwait& a, float s);
TensorAwait operator*(const TensorAwait& a, float s);
TensorAwait operator/(const TensorAwait& a, float s);
TensorAwait operator+(float s, const TensorAwait& a);
TensorAwait operator-(float s, const TensorAwait& a);
TensorAwait operator*(float s, const TensorAwait& a);
TensorAwait operator-(const TensorAwait& a);

// Waits several results at once, on the current stream of the default device (or on `s`): their
// pending graphs are planned together, so shared inputs run once and element-wise results of one
// shape come out of one fused kernel with several outputs. Returns the results in order; an error
// of any of them is thrown after all were attempted (each stays cached in its Await).
std::vector<Tensor> wait_all(const std::vector<TensorAwait>& results);
std::vector<Tensor> wait_all(const std::vector<TensorAwait>& results, const Stream& s);

// A readable view of the pending graph behind t and of what a wait would launch.
std::string explain(const TensorAwait& t);

}  // namespace defer
