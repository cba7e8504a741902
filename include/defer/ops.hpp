#pragma once
// Tensor ops, deferred (API.md section 5). Each op checks shapes, dtypes and devices when it is
// called (std::invalid_argument naming the op and the shapes) and returns an Await<Tensor>. In the
// default deferred mode nothing is launched until a result is waited; the wait then plans the
// pending graph that result needs and launches it on the wait's stream. In eager mode
// (ModeGuard(Mode::eager)) each op launches its kernel at once and returns a ready Await.
//
// Ops take f32 tensors (transpose and to also copy i32). An operand whose shape is not known before
// it runs (an awaitable() that is still pending) is checked when the graph runs instead.
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

// [m,k] x [k,n] -> [m,n]; [b,m,k] x [b,k,n] -> [b,m,n]; a 2-D operand is shared across the batch.
TensorAwait matmul(const TensorAwait& a, const TensorAwait& b);
// Swaps the last two dims (a copy).
TensorAwait transpose(const TensorAwait& a);
// Reductions over one dim (negative counts from the end); keepdim keeps it with extent 1.
TensorAwait sum(const TensorAwait& a, int dim, bool keepdim = false);
TensorAwait mean(const TensorAwait& a, int dim, bool keepdim = false);
TensorAwait max(const TensorAwait& a, int dim, bool keepdim = false);  // values
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
