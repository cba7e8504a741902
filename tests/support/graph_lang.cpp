#include "graph_lang.hpp"
#include "op_call.hpp"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <sstream>
#include <unordered_map>

namespace defer::lang {
namespace {

using kernels::ElementwiseOp;
using kernels::OpResult;
using kernels::ReduceOp;

// ---- the tables the grammar is spelled from --------------------------------------------------------

std::optional<ElementwiseOp> elementwise_named(std::string_view w) {
  for (unsigned i = 0; i < kernels::kElementwiseOpCount; ++i)
    if (w == kernels::kElementwiseOps[i].id) return static_cast<ElementwiseOp>(i);
  return std::nullopt;
}

std::optional<ReduceOp> reduce_named(std::string_view w) {
  for (unsigned i = 0; i < kernels::kReduceOpCount; ++i)
    if (w == kernels::kReduceOps[i].name) return static_cast<ReduceOp>(i);
  return std::nullopt;
}

bool is_cast(ElementwiseOp op) { return kernels::info(op).result == OpResult::cast; }

// ---- parsing ----------------------------------------------------------------------------------------

std::vector<std::string_view> split_words(std::string_view line) {
  std::vector<std::string_view> words;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
    std::size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t' && line[j] != '\r') ++j;
    if (j > i) words.push_back(line.substr(i, j - i));
    i = j;
  }
  return words;
}

bool is_name(std::string_view w) {
  if (w.empty() || w.size() > 32) return false;
  const auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; };
  if (!alpha(w[0])) return false;
  for (char c : w)
    if (!alpha(c) && !(c >= '0' && c <= '9')) return false;
  return true;
}

using Words = std::vector<std::string_view>;

class Parser {
 public:
  Program parse(std::string_view text) {
    int line_no = 0;
    std::size_t start = 0;
    while (start <= text.size()) {
      std::size_t end = text.find('\n', start);
      if (end == std::string_view::npos) end = text.size();
      ++line_no;
      std::string_view line = text.substr(start, end - start);
      if (const auto hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
      line_ = line_no;
      const auto words = split_words(line);
      if (!words.empty()) statement(words);
      start = end + 1;
    }
    return std::move(p_);
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { throw ParseError(line_, what); }

  int64_t integer(std::string_view w, int64_t lo, int64_t hi, const char* what) const {
    int64_t v = 0;
    const auto [ptr, ec] = std::from_chars(w.data(), w.data() + w.size(), v);
    if (ec != std::errc() || ptr != w.data() + w.size()) fail(std::string(what) + " '" + std::string(w) + "' is not an integer");
    if (v < lo || v > hi) fail(std::string(what) + " " + std::to_string(v) + " is out of [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v;
  }

  float number(std::string_view w) const {
    // strtof needs a terminated string; accept plain decimal/exponent forms, inf and nan
    std::string s(w);
    if (s.size() > 40) fail("number too long");
    for (char c : s)
      if (!((c >= '0' && c <= '9') || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E' || c == 'i' || c == 'n' ||
            c == 'f' || c == 'a'))
        fail("'" + s + "' is not a number");
    char* end = nullptr;
    const float v = std::strtof(s.c_str(), &end);
    if (end != s.c_str() + s.size()) fail("'" + s + "' is not a number");
    return v;
  }

  DType dtype(std::string_view w) const {
    if (const auto t = dtype_named(w)) return *t;
    std::string known;
    for (std::size_t i = 0; i < detail::kDTypeCount; ++i) known += std::string(i ? " " : "") + detail::kDTypes[i].name;
    fail("unknown dtype '" + std::string(w) + "' (dtypes: " + known + ")");
  }

  int use(std::string_view w) const {
    const auto it = ids_.find(std::string(w));
    if (it == ids_.end()) fail("'" + std::string(w) + "' is not defined");
    return it->second;
  }

  int define(std::string_view w) {
    if (!is_name(w)) fail("'" + std::string(w) + "' is not a valid name");
    if (ids_.count(std::string(w))) fail("'" + std::string(w) + "' is defined twice");
    const int id = static_cast<int>(p_.names.size());
    p_.names.emplace_back(w);
    ids_.emplace(std::string(w), id);
    return id;
  }

  // w[0] is the op; it takes lo - 1 to hi - 1 operand words.
  void expect_words(const Words& w, std::size_t lo, std::size_t hi) const {
    if (w.size() < lo || w.size() > hi)
      fail("'" + std::string(w[0]) + "' takes " + std::to_string(lo - 1) +
           (hi > lo ? " to " + std::to_string(hi - 1) : std::string()) + " operand(s), got " + std::to_string(w.size() - 1));
  }

  int dim(std::string_view w) const { return static_cast<int>(integer(w, -8, 8, "dim")); }

  void statement(const Words& w) {
    if (static_cast<int>(p_.stmts.size()) >= kMaxStatements) fail("more than " + std::to_string(kMaxStatements) + " statements");
    Stmt s;
    s.line = line_;
    if (w.size() >= 2 && w[1] == "=") {
      if (w.size() < 3) fail("'=' needs an op");
      op(Words(w.begin() + 2, w.end()), s);
      s.out = define(w[0]);  // after the operands: `x = add x x` uses an undefined x
    } else {
      directive(w, s);
    }
    p_.stmts.push_back(std::move(s));
  }

  void directive(const Words& w, Stmt& s) {
    const std::string_view d = w[0];
    auto on_off = [&](std::string_view a, std::string_view b) {
      if (w.size() != 2) fail(std::string(d) + " takes one word");
      if (w[1] == a) return true;
      if (w[1] == b) return false;
      fail(std::string(d) + " takes " + std::string(a) + " or " + std::string(b));
    };
    if (d == "mode") {
      s.kind = Kind::mode;
      s.flag = on_off("eager", "deferred");
    } else if (d == "fusion" || d == "graphs") {
      s.kind = d == "fusion" ? Kind::fusion : Kind::graphs;
      s.flag = on_off("on", "off");
    } else if (d == "stream") {
      if (w.size() != 2) fail("stream takes one number");
      s.kind = Kind::stream;
      s.stream = static_cast<int>(integer(w[1], 0, kStreams - 1, "stream"));
    } else if (d == "wait" || d == "drop") {
      if (w.size() != 2) fail(std::string(d) + " takes one name");
      s.kind = d == "wait" ? Kind::wait : Kind::drop;
      s.args.push_back(use(w[1]));
    } else if (d == "wait_all") {
      if (w.size() < 2 || w.size() > 17) fail("wait_all takes 1 to 16 names");
      s.kind = Kind::wait_all;
      for (std::size_t i = 1; i < w.size(); ++i) s.args.push_back(use(w[i]));
    } else {
      fail("unknown statement '" + std::string(d) + "'");
    }
  }

  // Extents from w[first] on, within the leaf limits.
  void leaf_shape(const Words& w, std::size_t first, Stmt& s) const {
    int64_t n = 1;
    for (std::size_t i = first; i < w.size(); ++i) {
      s.shape.push_back(integer(w[i], 0, kMaxExtent, "extent"));
      n *= s.shape.back();
    }
    if (n > kMaxLeafElements) fail("more than " + std::to_string(kMaxLeafElements) + " elements");
  }

  bool leaf(const Words& w, Stmt& s) const {
    const std::string_view o = w[0];
    if (o == "rand" || o == "pos" || o == "mask") {
      expect_words(w, 2, 2 + kMaxRank);
      s.kind = o == "rand" ? Kind::rand : o == "pos" ? Kind::pos : Kind::mask;
      s.seed = static_cast<uint32_t>(integer(w[1], 0, 0xffffffffLL, "seed"));
      leaf_shape(w, 2, s);
      return true;
    }
    if (o == "ids") {
      expect_words(w, 3, 3 + kMaxRank);
      s.kind = Kind::ids;
      s.seed = static_cast<uint32_t>(integer(w[1], 0, 0xffffffffLL, "seed"));
      s.maxval = integer(w[2], -kMaxIdValue, kMaxIdValue, "maxval");
      if (s.maxval == 0) fail("maxval 0 leaves no values to draw");
      leaf_shape(w, 3, s);
      return true;
    }
    if (o == "arange") {
      expect_words(w, 3, 3);
      s.kind = Kind::arange;
      s.shape = {integer(w[1], 0, kMaxExtent, "end")};
      s.dtype = dtype(w[2]);
      return true;
    }
    return false;
  }

  // A row of the op table: its tensor operands, then its scalars (the cast row: a dtype name).
  void elementwise(ElementwiseOp op, const Words& w, Stmt& s) const {
    const kernels::ElementwiseInfo& info = kernels::info(op);
    const auto tensors = static_cast<std::size_t>(info.tensors);
    const auto extra = is_cast(op) ? std::size_t{1} : static_cast<std::size_t>(info.scalars);
    expect_words(w, 1 + tensors + extra, 1 + tensors + extra);
    s.kind = Kind::elementwise;
    s.op = op;
    for (std::size_t i = 0; i < tensors; ++i) s.args.push_back(use(w[1 + i]));
    if (is_cast(op)) s.dtype = dtype(w[1 + tensors]);
    else
      for (std::size_t k = 0; k < extra; ++k) s.scalars[k] = number(w[1 + tensors + k]);
  }

  int64_t any_integer(std::string_view w, const char* what) const {
    return integer(w, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), what);
  }

  // The words from w[first] on as integers in [lo, hi].
  std::vector<int64_t> list(const Words& w, std::size_t first, int64_t lo, int64_t hi, const char* what) const {
    std::vector<int64_t> v;
    for (std::size_t i = first; i < w.size(); ++i) v.push_back(integer(w[i], lo, hi, what));
    return v;
  }

  // The views and copies of docs/api.md section 8 (transpose is above).
  bool view(const Words& w, Stmt& s) const {
    const std::string_view o = w[0];
    const auto one_operand = [&](Kind k) {
      s.kind = k;
      s.args = {use(w[1])};
    };
    if (o == "reshape" || o == "view" || o == "expand") {
      expect_words(w, 2, 2 + kMaxList);
      one_operand(o == "reshape" ? Kind::reshape : o == "view" ? Kind::view : Kind::expand);
      s.ints = list(w, 2, -kMaxListExtent, kMaxListExtent, "extent");
    } else if (o == "permute") {
      expect_words(w, 2, 2 + kMaxList);
      one_operand(Kind::permute);
      s.ints = list(w, 2, -8, 8, "dim");
    } else if (o == "unsqueeze" || o == "squeeze") {
      expect_words(w, 3, 3);
      one_operand(o == "unsqueeze" ? Kind::unsqueeze : Kind::squeeze);
      s.dim = dim(w[2]);
    } else if (o == "slice") {
      expect_words(w, 6, 6);
      one_operand(Kind::slice);
      s.dim = dim(w[2]);
      s.ints = {any_integer(w[3], "start"), any_integer(w[4], "end"), any_integer(w[5], "step")};
    } else if (o == "select") {
      expect_words(w, 4, 4);
      one_operand(Kind::select);
      s.dim = dim(w[2]);
      s.ints = {any_integer(w[3], "index")};
    } else if (o == "split") {
      expect_words(w, 5, 5);
      one_operand(Kind::split);
      s.ints = {any_integer(w[2], "size"), 0};
      s.dim = dim(w[3]);
      s.ints[1] = integer(w[4], -kMaxListExtent, kMaxListExtent, "part");
    } else if (o == "contiguous") {
      expect_words(w, 2, 2);
      one_operand(Kind::contiguous);
    } else if (o == "cat") {
      expect_words(w, 3, 6);
      s.kind = Kind::cat;
      for (std::size_t i = 1; i + 1 < w.size(); ++i) s.args.push_back(use(w[i]));
      s.dim = dim(w.back());
    } else {
      return false;
    }
    return true;
  }

  void op(const Words& w, Stmt& s) const {
    const std::string_view o = w[0];
    if (leaf(w, s)) return;
    if (const auto e = elementwise_named(o)) return elementwise(*e, w, s);
    if (const auto r = reduce_named(o)) {
      expect_words(w, 3, 4);
      s.kind = Kind::reduce;
      s.reduce = *r;
      s.args = {use(w[1])};
      s.dim = dim(w[2]);
      if (w.size() == 4) {
        if (w[3] != "keep") fail("expected 'keep', got '" + std::string(w[3]) + "'");
        s.keepdim = true;
      }
      return;
    }
    if (o == "softmax") {
      expect_words(w, 3, 3);
      s.kind = Kind::softmax;
      s.args = {use(w[1])};
      s.dim = dim(w[2]);
      return;
    }
    if (o == "layer_norm") {
      expect_words(w, 4, 5);
      s.kind = Kind::layer_norm;
      s.args = {use(w[1]), use(w[2]), use(w[3])};
      s.scalars[0] = w.size() == 5 ? number(w[4]) : 1e-5f;
      return;
    }
    if (o == "matmul" || o == "embedding") {
      expect_words(w, 3, 3);
      s.kind = o == "matmul" ? Kind::matmul : Kind::embedding;
      s.args = {use(w[1]), use(w[2])};
      return;
    }
    if (o == "transpose") {
      if (w.size() != 2 && w.size() != 4) fail("'transpose' takes 1 or 3 operand(s) (A, or A D0 D1), got " + std::to_string(w.size() - 1));
      s.kind = Kind::transpose;
      s.args = {use(w[1])};
      for (std::size_t i = 2; i < w.size(); ++i) s.ints.push_back(dim(w[i]));
      return;
    }
    if (view(w, s)) return;
    if (o == "index_select") {
      expect_words(w, 4, 4);
      s.kind = Kind::index_select;
      s.args = {use(w[1]), use(w[3])};
      s.dim = dim(w[2]);
      return;
    }
    fail("unknown op '" + std::string(o) + "'");
  }

  Program p_;
  std::unordered_map<std::string, int> ids_;
  int line_ = 0;
};

std::string float_text(float v) {
  char buf[64];
  const auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, v);  // shortest round-trip form
  if (ec != std::errc()) return "0";
  return std::string(buf, ptr);
}

// ---- calling the library -----------------------------------------------------------------------------

// The element count: 0 where an extent is 0, whatever the others; else the product, which fits
// (the rules reject shapes whose count does not fit in int64).
int64_t shape_numel(const Shape& s) {
  if (std::find(s.begin(), s.end(), 0) != s.end()) return 0;
  int64_t n = 1;
  for (int64_t e : s) n *= e;
  return n;
}

// The public function of an op-table row, called with the statement's operands
// (tests/support/op_call.hpp).
TensorAwait call_elementwise(const Stmt& st, const std::vector<TensorAwait>& a) {
  return testing::call_public(st.op, a, std::vector<float>(std::begin(st.scalars), std::end(st.scalars)), st.dtype);
}

// The reductions of the reduce table, by name.
TensorAwait call_reduce(const Stmt& st, const TensorAwait& a) {
#define DEFER_LANG_CASE(id, name, result) \
  case ReduceOp::id: return defer::name(a, st.dim, st.keepdim);
  switch (st.reduce) { DEFER_REDUCE_OPS(DEFER_LANG_CASE) }
#undef DEFER_LANG_CASE
  throw std::logic_error("graph_lang: not a reduction of the reduce table");
}

TensorAwait call_leaf(const Stmt& s, Device device) {
  const auto n = static_cast<std::size_t>(shape_numel(s.shape));
  switch (s.kind) {
    case Kind::rand:
    case Kind::pos: return from_vector(leaf_values(s.seed, n, s.kind == Kind::pos), s.shape, device);
    case Kind::ids: return from_host(id_values(s.seed, n, s.maxval), s.shape, device);
    case Kind::mask: return from_host(mask_values(s.seed, n), s.shape, device);
    case Kind::arange: return arange(s.shape[0], s.dtype, device);
    default: break;
  }
  throw std::logic_error("graph_lang: not a leaf");
}

TensorAwait call_op(const Stmt& s, const std::vector<TensorAwait>& a, Device device) {
  switch (s.kind) {
    case Kind::rand:
    case Kind::pos:
    case Kind::ids:
    case Kind::mask:
    case Kind::arange: return call_leaf(s, device);
    case Kind::elementwise: return call_elementwise(s, a);
    case Kind::reduce: return call_reduce(s, a[0]);
    case Kind::softmax: return softmax(a[0], s.dim);
    case Kind::layer_norm: return layer_norm(a[0], a[1], a[2], s.scalars[0]);
    case Kind::matmul: return matmul(a[0], a[1]);
    case Kind::transpose: return s.ints.empty() ? transpose(a[0]) : transpose(a[0], s.ints[0], s.ints[1]);
    case Kind::index_select: return index_select(a[0], s.dim, a[1]);
    case Kind::embedding: return embedding(a[0], a[1]);
    case Kind::reshape: return reshape(a[0], s.ints);
    case Kind::view: return view(a[0], s.ints);
    case Kind::permute: return permute(a[0], s.ints);
    case Kind::unsqueeze: return unsqueeze(a[0], s.dim);
    case Kind::squeeze: return squeeze(a[0], s.dim);
    case Kind::expand: return expand(a[0], s.ints);
    case Kind::slice: return slice(a[0], s.dim, s.ints[0], s.ints[1], s.ints[2]);
    case Kind::select: return select(a[0], s.dim, s.ints[0]);
    case Kind::split: {
      std::vector<TensorAwait> parts = split(a[0], s.ints[0], s.dim);
      // A part that split does not make is the language's own call-time error (infer_type says so).
      if (s.ints[1] < 0 || s.ints[1] >= static_cast<int64_t>(parts.size()))
        throw std::invalid_argument("split: no part " + std::to_string(s.ints[1]) + " of " + std::to_string(parts.size()));
      return parts[static_cast<std::size_t>(s.ints[1])];
    }
    case Kind::contiguous: return contiguous(a[0]);
    case Kind::cat: return cat(a, s.dim);
    default: break;
  }
  throw std::logic_error("graph_lang: not an op statement");
}

const char* outcome_of(const std::exception_ptr& e, std::string& message) {
  try {
    std::rethrow_exception(e);
  } catch (const OutOfMemory& x) {
    message = x.what();
    return "OutOfMemory";
  } catch (const DeviceError& x) {
    message = x.what();
    return "DeviceError";
  } catch (const Error& x) {
    message = x.what();
    return "Error";
  } catch (const std::invalid_argument& x) {
    message = x.what();
    return "invalid_argument";
  } catch (const std::out_of_range& x) {
    message = x.what();
    return "out_of_range";
  } catch (const std::logic_error& x) {
    message = x.what();
    return "logic_error";
  } catch (const std::exception& x) {
    message = x.what();
    return "other";
  } catch (...) {
    message = "unknown exception";
    return "other";
  }
}

// Errors found when an op runs (not when it is called): a deferred op reports them at the wait.
bool is_run_time(std::string_view outcome) {
  return outcome == "out_of_range" || outcome == "Error" || outcome == "DeviceError" || outcome == "OutOfMemory";
}

// ---- the shape and dtype rules -----------------------------------------------------------------------

std::optional<int> normalize(int dim, std::size_t rank) {
  const int r = static_cast<int>(rank);
  if (r == 0 || dim < -r || dim >= r) return std::nullopt;
  return dim < 0 ? dim + r : dim;
}

// NumPy broadcasting of any number of shapes.
std::optional<Shape> broadcast(const std::vector<ValueType>& a) {
  std::size_t r = 0;
  for (const ValueType& t : a) r = std::max(r, t.shape.size());
  Shape out(r, 1);
  for (const ValueType& t : a)
    for (std::size_t i = 0; i < r; ++i) {
      const int64_t e = i < r - t.shape.size() ? 1 : t.shape[i - (r - t.shape.size())];
      if (e == 1) continue;
      if (out[i] != 1 && out[i] != e) return std::nullopt;
      out[i] = e;
    }
  return out;
}

// The dtype of a result by the tables' result column.
DType result_dtype(OpResult r, DType data, DType cast_to) {
  switch (r) {
    case OpResult::same: return data;
    case OpResult::boolean: return DType::boolean;
    case OpResult::cast: return cast_to;
    case OpResult::index: return DType::i64;
  }
  return data;
}

// A condition or mask operand is boolean; the data operands share one dtype, floating where the
// row says so.
std::optional<ValueType> infer_elementwise(const Stmt& s, const std::vector<ValueType>& a) {
  const kernels::ElementwiseInfo& info = kernels::info(s.op);
  const int condition = kernels::condition_operand(s.op);
  std::optional<DType> data;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (static_cast<int>(i) == condition) {
      if (a[i].dtype != DType::boolean) return std::nullopt;
    } else if (!data) {
      data = a[i].dtype;
    } else if (*data != a[i].dtype) {
      return std::nullopt;
    }
  }
  if (!data || (info.data == kernels::OpData::floating && !is_floating(*data))) return std::nullopt;
  const auto shape = broadcast(a);
  if (!shape) return std::nullopt;
  return ValueType{*shape, result_dtype(info.result, *data, s.dtype)};
}

// Whether a reduction has no value for an empty dim (sum and mean do: 0 and NaN).
bool needs_elements(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::mean: return false;
    case ReduceOp::max:
    case ReduceOp::min:
    case ReduceOp::argmax: return true;
  }
  return true;
}

std::optional<ValueType> infer_reduce(const Stmt& s, const ValueType& a) {
  const auto d = normalize(s.dim, a.shape.size());
  if (!d || !is_floating(a.dtype)) return std::nullopt;
  const auto k = static_cast<std::size_t>(*d);
  if (needs_elements(s.reduce) && a.shape[k] == 0) return std::nullopt;
  Shape out = a.shape;
  if (s.keepdim) out[k] = 1;
  else out.erase(out.begin() + *d);
  return ValueType{out, result_dtype(kernels::kReduceOps[static_cast<unsigned>(s.reduce)].result, a.dtype, a.dtype)};
}

// As torch.matmul (docs/api.md section 8): [..., m, k] x [..., k, n] -> [..., m, n] with the batch
// dims broadcast; a 1-D first operand is a row [1, k], a 1-D second one a column [k, 1], and the
// dim added for it is not in the result.
std::optional<ValueType> infer_matmul(const ValueType& a, const ValueType& b) {
  const Shape& x = a.shape;
  const Shape& y = b.shape;
  if (a.dtype != b.dtype || !is_floating(a.dtype)) return std::nullopt;
  if (x.empty() || y.empty()) return std::nullopt;
  const int64_t k = x.back(), ky = y.size() == 1 ? y[0] : y[y.size() - 2];
  if (k != ky) return std::nullopt;
  const auto batch_of = [](const Shape& s) { return ValueType{Shape(s.begin(), s.end() - static_cast<std::ptrdiff_t>(std::min<std::size_t>(s.size(), 2))), DType::f32}; };
  const std::optional<Shape> batch = broadcast({batch_of(x), batch_of(y)});
  if (!batch) return std::nullopt;
  Shape out = *batch;
  if (x.size() >= 2) out.push_back(x[x.size() - 2]);
  if (y.size() >= 2) out.push_back(y.back());
  return ValueType{out, a.dtype};
}

std::optional<ValueType> infer_layer_norm(const Stmt& s, const std::vector<ValueType>& a) {
  const ValueType& x = a[0];
  if (!is_floating(x.dtype) || a[1].dtype != x.dtype || a[2].dtype != x.dtype) return std::nullopt;
  if (!(s.scalars[0] >= 0.f)) return std::nullopt;  // a negative or NaN eps
  if (x.shape.empty() || a[1].shape != Shape{x.shape.back()} || a[2].shape != Shape{x.shape.back()}) return std::nullopt;
  return x;
}

std::optional<ValueType> infer_index_select(const Stmt& s, const ValueType& a, const ValueType& index) {
  const auto d = normalize(s.dim, a.shape.size());
  if (!d || !is_integer(index.dtype) || index.shape.size() != 1) return std::nullopt;
  Shape out = a.shape;
  out[static_cast<std::size_t>(*d)] = index.shape[0];
  return ValueType{out, a.dtype};
}

std::optional<ValueType> infer_embedding(const ValueType& weight, const ValueType& ids) {
  if (weight.shape.size() != 2 || !is_integer(ids.dtype)) return std::nullopt;
  Shape out = ids.shape;
  out.push_back(weight.shape[1]);
  return ValueType{out, weight.dtype};
}

// ---- layouts and views (docs/api.md section 8) -------------------------------------------------------
//
// Written from the contract's meaning, not from the library's stride arithmetic: a view maps each
// element of its result to an element of its operand; its strides are whatever strides express
// that map (view_layout below finds them, or that none do, element by element).

// Row-major strides (saturated where a shape without elements has huge extents: then no stride matters).
Shape dense_strides(const Shape& shape) {
  Shape st(shape.size(), 0);
  int64_t step = 1;
  for (std::size_t d = shape.size(); d-- > 0;) {
    st[d] = step;
    if (__builtin_mul_overflow(step, std::max<int64_t>(shape[d], 1), &step)) step = std::numeric_limits<int64_t>::max();
  }
  return st;
}

Shape strides_of(const ValueType& t) { return t.strides.empty() ? dense_strides(t.shape) : t.strides; }

// The product of extents, or nullopt where it does not fit in int64 (the shape's element count
// must; a zero extent anywhere makes it 0).
std::optional<int64_t> checked_numel(const Shape& s) {
  if (std::find(s.begin(), s.end(), 0) != s.end()) return 0;
  int64_t n = 1;
  for (int64_t e : s)
    if (e < 0 || __builtin_mul_overflow(n, e, &n)) return std::nullopt;
  return n;
}

// Where the k-th element (row-major) of a value of this shape and these strides lies, in elements
// from its first.
int64_t address(const Shape& shape, const Shape& strides, int64_t k) {
  int64_t a = 0;
  for (std::size_t d = shape.size(); d-- > 0;) {
    a += (k % shape[d]) * strides[d];
    k /= shape[d];
  }
  return a;
}

// The strides under which `shape` reads t's elements in t's row-major order, or nullopt where no
// strides do: the address of every element must be an affine function of its index. Checked
// element by element (at most kMaxResultElements of them): this is the definition, not an algorithm.
std::optional<Shape> view_layout(const ValueType& t, const Shape& shape) {
  const int64_t n = shape_numel(t.shape);
  if (n == 0) return Shape{};  // no elements: any strides will do
  const Shape in = strides_of(t);
  const Shape unit = dense_strides(shape);
  Shape out(shape.size(), 0);
  for (std::size_t d = 0; d < shape.size(); ++d)
    if (shape[d] > 1) out[d] = address(t.shape, in, unit[d]);
  for (int64_t k = 0; k < n; ++k)
    if (address(t.shape, in, k) != address(shape, out, k)) return std::nullopt;
  return out;
}

ValueType viewed(Shape shape, DType dtype, const Shape& strides) {
  Shape st = canonical_strides(shape, strides);
  return ValueType{std::move(shape), dtype, std::move(st)};
}

// A dim where one is inserted (unsqueeze): [-rank - 1, rank].
std::optional<int> normalize_inserting(int dim, std::size_t rank) { return normalize(dim, rank + 1); }

// reshape/view's extents: at most one -1, the others >= 0, as many elements as `numel`.
std::optional<Shape> resolve_extents(const Shape& want, int64_t numel) {
  Shape out = want, known;
  std::optional<std::size_t> free;
  for (std::size_t d = 0; d < want.size(); ++d) {
    if (want[d] == -1) {
      if (free) return std::nullopt;
      free = d;
    } else if (want[d] < 0) {
      return std::nullopt;
    } else {
      known.push_back(want[d]);
    }
  }
  const std::optional<int64_t> k = checked_numel(known);
  if (!k) return std::nullopt;
  if (!free) return *k == numel ? std::optional<Shape>(out) : std::nullopt;
  if (*k == 0 || numel % *k != 0) return std::nullopt;  // -1 next to a 0 extent is ambiguous
  out[*free] = numel / *k;
  return out;
}

std::optional<ValueType> infer_reshape(const Stmt& s, const ValueType& a) {
  const std::optional<Shape> shape = resolve_extents(s.ints, shape_numel(a.shape));
  if (!shape) return std::nullopt;
  const std::optional<Shape> strides = view_layout(a, *shape);
  if (strides) return viewed(*shape, a.dtype, *strides);
  if (s.kind == Kind::view) return std::nullopt;  // view never copies
  return ValueType{*shape, a.dtype, {}};          // reshape copies: dense
}

std::optional<ValueType> infer_permute(const std::vector<int64_t>& dims, const ValueType& a) {
  if (dims.size() != a.shape.size()) return std::nullopt;
  const Shape in = strides_of(a);
  Shape shape, strides;
  std::vector<bool> used(a.shape.size(), false);
  for (int64_t d : dims) {
    const auto k = normalize(static_cast<int>(d), a.shape.size());
    if (!k || used[static_cast<std::size_t>(*k)]) return std::nullopt;
    used[static_cast<std::size_t>(*k)] = true;
    shape.push_back(a.shape[static_cast<std::size_t>(*k)]);
    strides.push_back(in[static_cast<std::size_t>(*k)]);
  }
  return viewed(shape, a.dtype, strides);
}

std::optional<ValueType> infer_transpose(const Stmt& s, const ValueType& a) {
  const std::size_t r = a.shape.size();
  if (s.ints.empty() && r < 2) return std::nullopt;  // the last two dims
  const auto d0 = s.ints.empty() ? std::optional<int>(static_cast<int>(r) - 2) : normalize(static_cast<int>(s.ints[0]), r);
  const auto d1 = s.ints.empty() ? std::optional<int>(static_cast<int>(r) - 1) : normalize(static_cast<int>(s.ints[1]), r);
  if (!d0 || !d1) return std::nullopt;
  std::vector<int64_t> dims(r);
  for (std::size_t d = 0; d < r; ++d) dims[d] = static_cast<int64_t>(d);
  std::swap(dims[static_cast<std::size_t>(*d0)], dims[static_cast<std::size_t>(*d1)]);
  return infer_permute(dims, a);
}

std::optional<ValueType> infer_expand(const Shape& want, const ValueType& a) {
  const std::size_t r = a.shape.size();
  if (want.size() < r) return std::nullopt;
  const std::size_t lead = want.size() - r;
  const Shape in = strides_of(a);
  Shape shape(want.size(), 0), strides(want.size(), 0);  // stride 0: new and grown dims repeat
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (i < lead) {
      if (want[i] < 0) return std::nullopt;  // a new dim has no extent to keep
      shape[i] = want[i];
      continue;
    }
    const std::size_t j = i - lead;
    if (want[i] == -1 || want[i] == a.shape[j]) {
      shape[i] = a.shape[j];
      strides[i] = in[j];
    } else if (a.shape[j] == 1 && want[i] >= 0) {
      shape[i] = want[i];
    } else {
      return std::nullopt;
    }
  }
  if (!checked_numel(shape)) return std::nullopt;
  return viewed(shape, a.dtype, strides);
}

// Python's slice rules: a negative position counts from the end, then both are clamped to [0, n].
int64_t slice_position(int64_t p, int64_t n) {
  if (p < 0) p += n;  // p >= INT64_MIN and n >= 0: no overflow
  return std::clamp<int64_t>(p, 0, n);
}

std::optional<ValueType> infer_slice(const Stmt& s, const ValueType& a) {
  const auto d = normalize(s.dim, a.shape.size());
  const int64_t step = s.ints[2];
  if (!d || step < 1) return std::nullopt;
  const auto k = static_cast<std::size_t>(*d);
  const int64_t n = a.shape[k], start = slice_position(s.ints[0], n), end = slice_position(s.ints[1], n);
  const int64_t span = std::max<int64_t>(end - start, 0);
  const int64_t count = span / step + (span % step != 0 ? 1 : 0);
  Shape shape = a.shape, strides = strides_of(a);
  shape[k] = count;
  strides[k] = count > 1 ? strides[k] * step : 0;  // step < n here: no overflow
  return viewed(shape, a.dtype, strides);
}

// Drops dim k (select, squeeze).
ValueType without_dim(const ValueType& a, std::size_t k) {
  Shape shape = a.shape, strides = strides_of(a);
  shape.erase(shape.begin() + static_cast<std::ptrdiff_t>(k));
  strides.erase(strides.begin() + static_cast<std::ptrdiff_t>(k));
  return viewed(shape, a.dtype, strides);
}

std::optional<ValueType> infer_select(const Stmt& s, const ValueType& a) {
  const auto d = normalize(s.dim, a.shape.size());
  if (!d) return std::nullopt;
  const int64_t n = a.shape[static_cast<std::size_t>(*d)], index = s.ints[0];
  if (index < -n || index >= n) return std::nullopt;
  return without_dim(a, static_cast<std::size_t>(*d));
}

// Part ints[1] of split(a, ints[0], dim): the parts are slices of `size` along dim, the last one
// shorter where size does not divide the extent; a dim of extent 0 gives one empty part.
std::optional<ValueType> infer_split(const Stmt& s, const ValueType& a) {
  const int64_t size = s.ints[0], part = s.ints[1];
  const auto d = normalize(s.dim, a.shape.size());
  if (size < 1 || !d) return std::nullopt;
  const auto k = static_cast<std::size_t>(*d);
  const int64_t n = a.shape[k];
  const int64_t parts = n == 0 ? 1 : n / size + (n % size != 0 ? 1 : 0);
  if (part < 0 || part >= parts) return std::nullopt;
  Shape shape = a.shape;
  shape[k] = n == 0 ? 0 : std::min(size, n - part * size);
  return viewed(shape, a.dtype, strides_of(a));
}

std::optional<ValueType> infer_unsqueeze(const Stmt& s, const ValueType& a) {
  const auto d = normalize_inserting(s.dim, a.shape.size());
  if (!d) return std::nullopt;
  Shape shape = a.shape, strides = strides_of(a);
  shape.insert(shape.begin() + *d, 1);
  strides.insert(strides.begin() + *d, 0);
  return viewed(shape, a.dtype, strides);
}

std::optional<ValueType> infer_squeeze(const Stmt& s, const ValueType& a) {
  const auto d = normalize(s.dim, a.shape.size());
  if (!d || a.shape[static_cast<std::size_t>(*d)] != 1) return std::nullopt;
  return without_dim(a, static_cast<std::size_t>(*d));
}

// One dtype, the first tensor's rank (at least 1) for all, equal extents but along dim. Dense.
std::optional<ValueType> infer_cat(const Stmt& s, const std::vector<ValueType>& a) {
  const auto d = normalize(s.dim, a[0].shape.size());
  if (!d) return std::nullopt;
  const auto k = static_cast<std::size_t>(*d);
  Shape shape = a[0].shape;
  shape[k] = 0;
  for (const ValueType& t : a) {
    if (t.dtype != a[0].dtype || t.shape.size() != shape.size()) return std::nullopt;
    for (std::size_t i = 0; i < shape.size(); ++i)
      if (i != k && t.shape[i] != shape[i]) return std::nullopt;
    shape[k] += t.shape[k];
  }
  return ValueType{shape, a[0].dtype, {}};
}

int64_t op_cost(const Stmt& s, const std::vector<ValueType>& a, const ValueType& out) {
  const int64_t n = shape_numel(out.shape);
  if (s.kind == Kind::matmul) return n * std::max<int64_t>(a[0].shape.back(), 1);
  if (s.kind == Kind::reduce) return shape_numel(a[0].shape);
  return n;
}

// ---- running -------------------------------------------------------------------------------------

// A value while the program runs: its Await, or the run-time error of the eager call that was to
// make it (see run() in graph_lang.hpp).
struct Slot {
  std::optional<TensorAwait> await;
  std::exception_ptr failed;
  ValueType type;
  bool defined() const { return await.has_value() || failed != nullptr; }
};

std::vector<int64_t> exact_integers(const Tensor& t) {
  if (t.dtype() == DType::i64) return to_host<int64_t>(t);
  const auto v = to_host<int32_t>(t);
  return std::vector<int64_t>(v.begin(), v.end());
}

class Runner {
 public:
  Runner(const Program& p, const RunOptions& o) : p_(p), o_(o), slots_(p.names.size()), eager_(o.all_eager) {
    streams_.push_back(default_stream(o.device));
    for (int i = 1; i < kStreams; ++i) streams_.push_back(Stream::create(o.device));
  }

  RunResult run() {
    for (std::size_t i = 0; i < p_.stmts.size(); ++i) {
      StreamGuard on(stream());
      statement(p_.stmts[i], static_cast<int>(i));
    }
    leftovers();
    for (Stream& s : streams_) s.synchronize();
    return std::move(result_);
  }

 private:
  Stream& stream() { return streams_[static_cast<std::size_t>(o_.single_stream ? 0 : current_)]; }
  Slot& slot(int id) { return slots_[static_cast<std::size_t>(id)]; }
  const std::string& name(int id) const { return p_.names[static_cast<std::size_t>(id)]; }

  void statement(const Stmt& s, int stmt) {
    switch (s.kind) {
      case Kind::mode:
        if (!o_.all_eager) eager_ = s.flag;
        return;
      case Kind::stream: current_ = s.stream; return;
      case Kind::fusion:
        if (o_.apply_switches) set_fusion_enabled(s.flag);
        return;
      case Kind::graphs:
        if (o_.apply_switches) set_graphs_enabled(s.flag);
        return;
      case Kind::drop: slot(s.args[0]) = Slot{}; return;
      case Kind::wait:
        if (!o_.skip_waits && slot(s.args[0]).defined()) observe(stmt, s.args[0]);
        return;
      case Kind::wait_all:
        if (!o_.skip_waits) wait_together(s, stmt);
        return;
      default: call(s, stmt); return;
    }
  }

  void wait_together(const Stmt& s, int stmt) {
    std::vector<TensorAwait> list;
    for (int a : s.args)
      if (slot(a).await) list.push_back(*slot(a).await);
    if (!list.empty()) {
      try {
        wait_all(list, stream());
      } catch (...) {
        // each error stays cached in its own Await; the observations below read them one by one
      }
    }
    for (int a : s.args)
      if (slot(a).defined()) observe(stmt, a);
  }

  void observe(int stmt, int id) {
    Observation o;
    o.stmt = stmt;
    o.id = id;
    o.name = name(id);
    const Slot& v = slot(id);
    try {
      if (v.failed) std::rethrow_exception(v.failed);
      const Tensor t = wait(*v.await);
      o.shape = t.shape();
      o.dtype = t.dtype();
      o.values = to_vector(t);
      if (is_integer(t.dtype())) o.exact = exact_integers(t);
      o.outcome = "ok";
      if (o.shape != v.type.shape || o.dtype != v.type.dtype)
        problem("'" + o.name + "' is " + shape_str(o.shape) + " " + dtype_name(o.dtype) + ", the shape rules say " +
                shape_str(v.type.shape) + " " + dtype_name(v.type.dtype));
      else if (const Shape got = canonical_strides(t.shape(), t.strides()); got != v.type.strides)
        problem("'" + o.name + "' " + shape_str(o.shape) + " has strides " + shape_str(t.strides()) + ", the layout rules say " +
                (v.type.strides.empty() ? std::string("dense") : shape_str(v.type.strides)) + " (extent-1 dims aside)");
    } catch (...) {
      o.outcome = outcome_of(std::current_exception(), o.message);
      // The rules accepted the call (else the value would not exist): only a run-time error
      // (docs/api.md section 7) may fail its wait, never a call-time kind such as invalid_argument.
      if (!is_run_time(o.outcome))
        problem("'" + o.name + "': the wait failed with " + o.outcome + " (" + o.message + "), not a run-time error");
    }
    result_.observations.push_back(std::move(o));
  }

  void failure(int stmt, int id, const std::string& outcome, const std::string& message) {
    Observation o;
    o.stmt = stmt;
    o.id = id;
    o.name = name(id);
    o.outcome = outcome;
    o.message = message;
    result_.observations.push_back(std::move(o));
  }

  void problem(const std::string& what) { result_.problems.push_back(what); }

  // An op call. Operands that are undefined (their call failed, or dropped) skip it.
  void call(const Stmt& s, int stmt) {
    std::vector<ValueType> types;
    std::exception_ptr operand_error;
    for (int a : s.args) {
      if (!slot(a).defined()) return;
      types.push_back(slot(a).type);
      if (!operand_error) operand_error = slot(a).failed;
    }
    const std::optional<ValueType> expected = infer_type(s, types);
    if (expected && (shape_numel(expected->shape) > kMaxResultElements || op_cost(s, types, *expected) > kMaxOpCost))
      return;  // too slow to run: skipped
    if (operand_error) return inherit(s, stmt, expected, operand_error);
    try {
      ModeGuard mode(eager_ ? Mode::eager : Mode::deferred);
      TensorAwait value = call_op(s, argument_awaits(s), o_.device);
      if (!expected) return problem("statement " + std::to_string(stmt) + " ('" + name(s.out) + "'): the op accepted operands the shape rules reject");
      slot(s.out) = Slot{std::move(value), nullptr, *expected};
    } catch (...) {
      rejected(s, stmt, expected, std::current_exception());
    }
  }

  std::vector<TensorAwait> argument_awaits(const Stmt& s) {
    std::vector<TensorAwait> args;
    for (int a : s.args) args.push_back(*slot(a).await);
    return args;
  }

  // An operand failed when it ran (an eager call that threw). A deferred call with the Await of
  // that operand would be checked (and maybe rejected) and then fail the same way when it runs: so
  // the rules decide the call, and an accepted one holds the operand's error.
  void inherit(const Stmt& s, int stmt, const std::optional<ValueType>& expected, const std::exception_ptr& error) {
    if (!expected) return failure(stmt, s.out, "invalid_argument", "not called (an operand failed): the shape rules reject the operands");
    slot(s.out) = Slot{std::nullopt, error, *expected};
  }

  // The call threw: at call time (the rules should have said so), or an eager op that ran and failed.
  void rejected(const Stmt& s, int stmt, const std::optional<ValueType>& expected, const std::exception_ptr& error) {
    std::string message;
    const std::string outcome = outcome_of(error, message);
    if (expected && is_run_time(outcome)) {
      slot(s.out) = Slot{std::nullopt, error, *expected};
      return;
    }
    if (expected)
      problem("statement " + std::to_string(stmt) + " ('" + name(s.out) + "'): the op rejected operands the shape rules accept: " +
              outcome + ": " + message);
    else if (is_run_time(outcome))
      problem("statement " + std::to_string(stmt) + " ('" + name(s.out) + "'): the op accepted operands the shape rules reject (then failed: " +
              message + ")");
    failure(stmt, s.out, outcome, message);
  }

  void leftovers() {
    for (std::size_t id = 0; id < slots_.size(); ++id) {
      if (!slots_[id].defined()) continue;
      if (slots_[id].await) result_.held.emplace(static_cast<int>(id), *slots_[id].await);
      if (o_.wait_leftovers) observe(static_cast<int>(p_.stmts.size()), static_cast<int>(id));
    }
  }

  const Program& p_;
  const RunOptions& o_;
  std::vector<Slot> slots_;
  std::vector<Stream> streams_;
  int current_ = 0;
  bool eager_ = false;
  RunResult result_;
};

std::string compare_values(const Observation& x, const Observation& y) {
  std::ostringstream out;
  if (x.exact != y.exact) {
    for (std::size_t k = 0; k < std::min(x.exact.size(), y.exact.size()); ++k)
      if (x.exact[k] != y.exact[k]) {
        out << "element " << k << ": " << x.exact[k] << " vs " << y.exact[k];
        return out.str();
      }
    return "integer counts differ";
  }
  if (x.values.size() != y.values.size()) return "value counts differ";
  for (std::size_t k = 0; k < x.values.size(); ++k) {
    const float u = x.values[k], v = y.values[k];
    if (std::isnan(u) && std::isnan(v)) continue;
    if (std::bit_cast<uint32_t>(u) != std::bit_cast<uint32_t>(v) && !(u == 0.f && v == 0.f)) {
      out << "element " << k << ": " << u << " vs " << v;
      return out.str();
    }
  }
  return "";
}

}  // namespace

Shape canonical_strides(const Shape& shape, const Shape& strides) {
  if (strides.size() != shape.size() || shape_numel(shape) == 0) return {};
  Shape st = strides;
  const Shape dense = dense_strides(shape);
  bool is_dense = true;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) st[d] = 0;
    else is_dense = is_dense && st[d] == dense[d];
  }
  return is_dense ? Shape{} : st;
}

std::optional<DType> dtype_named(std::string_view name) {
  for (std::size_t i = 0; i < detail::kDTypeCount; ++i)
    if (name == detail::kDTypes[i].name) return static_cast<DType>(i);
  return std::nullopt;
}

// The type without the operands' layouts: the dense result of an op other than a view.
std::optional<ValueType> dense(std::optional<ValueType> t) {
  if (t) t->strides.clear();
  return t;
}

// The kernels' limit (docs/api.md leaves it to the implementation; defer: 8): an op whose operands
// index the result with more than 8 dims once the dims every operand steps through as one are
// merged is refused at its call. `operands`: each operand's strides broadcast to `out` (0 where
// broadcast); extent-1 dims never count, and an empty result indexes nothing.
bool within_kernel_dims(const Shape& out, const std::vector<Shape>& operands) {
  constexpr int kMaxKernelDims = 8;
  if (out.size() <= static_cast<std::size_t>(kMaxKernelDims)) return true;
  for (int64_t e : out)
    if (e == 0) return true;
  int dims = 0;
  std::optional<std::size_t> inner;  // the innermost dim of the current merged run
  int64_t run_extent = 1;
  for (std::size_t d = out.size(); d-- > 0;) {
    if (out[d] == 1) continue;
    bool merges = inner.has_value();
    for (const Shape& st : operands) merges = merges && st[d] == st[*inner] * run_extent;
    if (merges) {
      run_extent *= out[d];
      continue;
    }
    ++dims;
    inner = d;
    run_extent = out[d];
  }
  return dims <= kMaxKernelDims;
}

// A view's result within the kernels' limit, else refused.
std::optional<ValueType> view_result(std::optional<ValueType> t) {
  if (t && !within_kernel_dims(t->shape, {strides_of(*t)})) return std::nullopt;
  return t;
}

// An element-wise result whose operands, broadcast to it, stay within the kernels' limit.
std::optional<ValueType> elementwise_result(std::optional<ValueType> t, const std::vector<ValueType>& a) {
  if (!t || t->shape.size() <= 8) return t;
  std::vector<Shape> operands;
  for (const ValueType& x : a) {
    const Shape own = strides_of(x);
    Shape st(t->shape.size(), 0);
    for (std::size_t k = 0; k < x.shape.size(); ++k) {
      const std::size_t d = x.shape.size() - 1 - k, o = t->shape.size() - 1 - k;
      st[o] = x.shape[d] == 1 ? 0 : own[d];
    }
    operands.push_back(std::move(st));
  }
  if (!within_kernel_dims(t->shape, operands)) return std::nullopt;
  return t;
}

std::optional<ValueType> infer_type(const Stmt& s, const std::vector<ValueType>& a) {
  switch (s.kind) {
    case Kind::rand:
    case Kind::pos: return ValueType{s.shape, DType::f32};
    case Kind::ids: return ValueType{s.shape, DType::i64};
    case Kind::mask: return ValueType{s.shape, DType::boolean};
    case Kind::arange: return ValueType{s.shape, s.dtype};
    case Kind::elementwise: return dense(elementwise_result(infer_elementwise(s, a), a));
    case Kind::reduce: return dense(infer_reduce(s, a[0]));
    case Kind::softmax:
      if (!normalize(s.dim, a[0].shape.size()) || !is_floating(a[0].dtype)) return std::nullopt;
      return dense(a[0]);
    case Kind::layer_norm: return dense(infer_layer_norm(s, a));
    case Kind::matmul: return dense(infer_matmul(a[0], a[1]));
    case Kind::transpose: return view_result(infer_transpose(s, a[0]));
    case Kind::index_select: return dense(infer_index_select(s, a[0], a[1]));
    case Kind::embedding: return dense(infer_embedding(a[0], a[1]));
    case Kind::reshape:
    case Kind::view: return view_result(infer_reshape(s, a[0]));
    case Kind::permute: return view_result(infer_permute(s.ints, a[0]));
    case Kind::unsqueeze: return view_result(infer_unsqueeze(s, a[0]));
    case Kind::squeeze: return view_result(infer_squeeze(s, a[0]));
    case Kind::expand: return view_result(infer_expand(s.ints, a[0]));
    case Kind::slice: return view_result(infer_slice(s, a[0]));
    case Kind::select: return view_result(infer_select(s, a[0]));
    case Kind::split: return view_result(infer_split(s, a[0]));
    case Kind::contiguous: return ValueType{a[0].shape, a[0].dtype, {}};
    case Kind::cat: return infer_cat(s, a);
    case Kind::mode:
    case Kind::stream:
    case Kind::fusion:
    case Kind::graphs:
    case Kind::wait:
    case Kind::wait_all:
    case Kind::drop: return std::nullopt;
  }
  return std::nullopt;
}

Program parse(std::string_view text) { return Parser().parse(text); }

std::vector<float> leaf_values(uint32_t seed, std::size_t count, bool positive) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(positive ? 0.25f : -2.f, 2.f);
  std::vector<float> v(count);
  for (auto& x : v) {
    do x = dist(gen);
    while (x == 0.f);
  }
  return v;
}

std::vector<int64_t> id_values(uint32_t seed, std::size_t count, int64_t maxval) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int64_t> dist(maxval > 0 ? 0 : maxval, maxval > 0 ? maxval - 1 : -1);
  std::vector<int64_t> v(count);
  for (auto& x : v) x = dist(gen);
  return v;
}

std::vector<uint8_t> mask_values(uint32_t seed, std::size_t count) {
  std::mt19937 gen(seed);
  std::vector<uint8_t> v(count);
  for (auto& x : v) x = static_cast<uint8_t>(gen() & 1u);
  return v;
}

std::string keyword(const Stmt& s) {
  switch (s.kind) {
    case Kind::rand: return "rand";
    case Kind::pos: return "pos";
    case Kind::ids: return "ids";
    case Kind::mask: return "mask";
    case Kind::arange: return "arange";
    case Kind::elementwise: return kernels::info(s.op).id;
    case Kind::reduce: return kernels::name(s.reduce);
    case Kind::softmax: return "softmax";
    case Kind::layer_norm: return "layer_norm";
    case Kind::matmul: return "matmul";
    case Kind::transpose: return "transpose";
    case Kind::index_select: return "index_select";
    case Kind::embedding: return "embedding";
    case Kind::reshape: return "reshape";
    case Kind::view: return "view";
    case Kind::permute: return "permute";
    case Kind::unsqueeze: return "unsqueeze";
    case Kind::squeeze: return "squeeze";
    case Kind::expand: return "expand";
    case Kind::slice: return "slice";
    case Kind::select: return "select";
    case Kind::split: return "split";
    case Kind::contiguous: return "contiguous";
    case Kind::cat: return "cat";
    case Kind::mode: return "mode";
    case Kind::stream: return "stream";
    case Kind::fusion: return "fusion";
    case Kind::graphs: return "graphs";
    case Kind::wait: return "wait";
    case Kind::wait_all: return "wait_all";
    case Kind::drop: return "drop";
  }
  return "?";
}

std::string to_text(const Program& p) {
  std::ostringstream out;
  const auto name = [&](int id) -> const std::string& { return p.names[static_cast<std::size_t>(id)]; };
  for (const Stmt& s : p.stmts) {
    if (s.out >= 0) out << name(s.out) << " = ";
    out << keyword(s);
    switch (s.kind) {
      case Kind::rand:
      case Kind::pos:
      case Kind::mask:
      case Kind::ids:
        out << ' ' << s.seed;
        if (s.kind == Kind::ids) out << ' ' << s.maxval;
        for (int64_t e : s.shape) out << ' ' << e;
        break;
      case Kind::arange: out << ' ' << s.shape[0] << ' ' << dtype_name(s.dtype); break;
      case Kind::elementwise:
        for (int a : s.args) out << ' ' << name(a);
        if (is_cast(s.op)) out << ' ' << dtype_name(s.dtype);
        else
          for (int k = 0; k < kernels::info(s.op).scalars; ++k) out << ' ' << float_text(s.scalars[static_cast<std::size_t>(k)]);
        break;
      case Kind::reduce: out << ' ' << name(s.args[0]) << ' ' << s.dim << (s.keepdim ? " keep" : ""); break;
      case Kind::softmax: out << ' ' << name(s.args[0]) << ' ' << s.dim; break;
      case Kind::layer_norm:
        out << ' ' << name(s.args[0]) << ' ' << name(s.args[1]) << ' ' << name(s.args[2]) << ' ' << float_text(s.scalars[0]);
        break;
      case Kind::index_select: out << ' ' << name(s.args[0]) << ' ' << s.dim << ' ' << name(s.args[1]); break;
      case Kind::transpose:
      case Kind::reshape:
      case Kind::view:
      case Kind::permute:
      case Kind::expand:
        out << ' ' << name(s.args[0]);
        for (int64_t v : s.ints) out << ' ' << v;
        break;
      case Kind::unsqueeze:
      case Kind::squeeze: out << ' ' << name(s.args[0]) << ' ' << s.dim; break;
      case Kind::slice:
      case Kind::select:
        out << ' ' << name(s.args[0]) << ' ' << s.dim;
        for (int64_t v : s.ints) out << ' ' << v;
        break;
      case Kind::split: out << ' ' << name(s.args[0]) << ' ' << s.ints[0] << ' ' << s.dim << ' ' << s.ints[1]; break;
      case Kind::cat:
        for (int a : s.args) out << ' ' << name(a);
        out << ' ' << s.dim;
        break;
      case Kind::matmul:
      case Kind::contiguous:
      case Kind::embedding:
      case Kind::wait:
      case Kind::wait_all:
      case Kind::drop:
        for (int a : s.args) out << ' ' << name(a);
        break;
      case Kind::mode: out << ' ' << (s.flag ? "eager" : "deferred"); break;
      case Kind::stream: out << ' ' << s.stream; break;
      case Kind::fusion:
      case Kind::graphs: out << ' ' << (s.flag ? "on" : "off"); break;
    }
    out << '\n';
  }
  return out.str();
}

RunResult run(const Program& p, const RunOptions& options) {
  struct Restore {
    bool fusion = fusion_enabled(), graphs = graphs_enabled();
    ~Restore() {
      set_fusion_enabled(fusion);
      set_graphs_enabled(graphs);
    }
  } restore;
  return Runner(p, options).run();
}

std::string compare(const RunResult& a, const RunResult& b) {
  const std::size_t n = std::min(a.observations.size(), b.observations.size());
  for (std::size_t i = 0; i < n; ++i) {
    const Observation& x = a.observations[i];
    const Observation& y = b.observations[i];
    const std::string where = "observation " + std::to_string(i) + " (statement " + std::to_string(x.stmt) + ", '" + x.name + "'): ";
    if (x.stmt != y.stmt || x.name != y.name) return where + "different statements: " + std::to_string(y.stmt) + " '" + y.name + "'";
    if (x.outcome != y.outcome) return where + x.outcome + " (" + x.message + ") vs " + y.outcome + " (" + y.message + ")";
    if (x.shape != y.shape) return where + "shape " + shape_str(x.shape) + " vs " + shape_str(y.shape);
    if (x.dtype != y.dtype) return where + "dtype " + dtype_name(x.dtype) + " vs " + dtype_name(y.dtype);
    if (const std::string d = compare_values(x, y); !d.empty()) return where + d;
  }
  if (a.observations.size() != b.observations.size())
    return "observation counts differ: " + std::to_string(a.observations.size()) + " vs " + std::to_string(b.observations.size());
  return "";
}

}  // namespace defer::lang
