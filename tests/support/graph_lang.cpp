#include "graph_lang.hpp"

#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <unordered_map>

namespace defer::lang {
namespace {

constexpr const char* kUnaryNames[] = {"neg", "abs", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "silu", "gelu", "gelu_tanh"};
constexpr const char* kBinaryNames[] = {"add", "sub", "mul", "div", "maximum", "minimum"};

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

  void expect_words(const std::vector<std::string_view>& w, std::size_t lo, std::size_t hi) const {
    if (w.size() < lo || w.size() > hi)
      fail("'" + std::string(w[0] == "=" ? w[1] : w[0]) + "' takes " + std::to_string(lo - 1) +
           (hi > lo ? " to " + std::to_string(hi - 1) : std::string()) + " operand(s), got " + std::to_string(w.size() - 1));
  }

  void statement(const std::vector<std::string_view>& w) {
    if (static_cast<int>(p_.stmts.size()) >= kMaxStatements) fail("more than " + std::to_string(kMaxStatements) + " statements");
    Stmt s;
    s.line = line_;
    if (w.size() >= 2 && w[1] == "=") {
      if (w.size() < 3) fail("'=' needs an op");
      op(std::vector<std::string_view>(w.begin() + 2, w.end()), s);
      s.out = define(w[0]);  // after the operands: `x = add x x` uses an undefined x
    } else {
      directive(w, s);
    }
    p_.stmts.push_back(std::move(s));
  }

  void directive(const std::vector<std::string_view>& w, Stmt& s) {
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

  void op(const std::vector<std::string_view>& w, Stmt& s) {
    const std::string_view o = w[0];
    for (int u = 0; u < static_cast<int>(std::size(kUnaryNames)); ++u)
      if (o == kUnaryNames[u]) {
        expect_words(w, 2, 2);
        s.kind = Kind::unary;
        s.unary = static_cast<Unary>(u);
        s.args = {use(w[1])};
        return;
      }
    for (int b = 0; b < static_cast<int>(std::size(kBinaryNames)); ++b) {
      if (o == kBinaryNames[b]) {
        expect_words(w, 3, 3);
        s.kind = Kind::binary;
        s.binary = static_cast<Binary>(b);
        s.args = {use(w[1]), use(w[2])};
        return;
      }
      if (b < 4 && o == std::string(kBinaryNames[b]) + "s") {
        expect_words(w, 3, 3);
        s.kind = Kind::scalar;
        s.binary = static_cast<Binary>(b);
        s.args = {use(w[1])};
        s.scalar = number(w[2]);
        return;
      }
    }
    if (o == "rand" || o == "pos") {
      expect_words(w, 2, 2 + kMaxRank);
      s.kind = o == "rand" ? Kind::rand : Kind::pos;
      s.seed = static_cast<uint32_t>(integer(w[1], 0, 0xffffffffLL, "seed"));
      int64_t n = 1;
      for (std::size_t i = 2; i < w.size(); ++i) {
        s.shape.push_back(integer(w[i], 0, kMaxExtent, "extent"));
        n *= s.shape.back();
      }
      if (n > kMaxLeafElements) fail("more than " + std::to_string(kMaxLeafElements) + " elements");
      return;
    }
    if (o == "sum" || o == "mean" || o == "max") {
      expect_words(w, 3, 4);
      s.kind = o == "sum" ? Kind::sum : o == "mean" ? Kind::mean : Kind::max;
      s.args = {use(w[1])};
      s.dim = static_cast<int>(integer(w[2], -8, 8, "dim"));
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
      s.dim = static_cast<int>(integer(w[2], -8, 8, "dim"));
      return;
    }
    if (o == "layer_norm") {
      expect_words(w, 4, 5);
      s.kind = Kind::layer_norm;
      s.args = {use(w[1]), use(w[2]), use(w[3])};
      s.scalar = w.size() == 5 ? number(w[4]) : 1e-5f;
      return;
    }
    if (o == "matmul") {
      expect_words(w, 3, 3);
      s.kind = Kind::matmul;
      s.args = {use(w[1]), use(w[2])};
      return;
    }
    if (o == "transpose") {
      expect_words(w, 2, 2);
      s.kind = Kind::transpose;
      s.args = {use(w[1])};
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

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t e : s) n *= e;
  return n;
}

TensorAwait call_op(const Stmt& s, const std::vector<TensorAwait>& a, Device device) {
  switch (s.kind) {
    case Kind::rand:
    case Kind::pos:
      return from_vector(leaf_values(s.seed, static_cast<std::size_t>(shape_numel(s.shape)), s.kind == Kind::pos), s.shape, device);
    case Kind::unary:
      switch (s.unary) {
        case Unary::neg: return neg(a[0]);
        case Unary::abs: return defer::abs(a[0]);
        case Unary::exp: return defer::exp(a[0]);
        case Unary::log: return defer::log(a[0]);
        case Unary::sqrt: return defer::sqrt(a[0]);
        case Unary::tanh: return defer::tanh(a[0]);
        case Unary::sigmoid: return sigmoid(a[0]);
        case Unary::relu: return relu(a[0]);
        case Unary::silu: return silu(a[0]);
        case Unary::gelu: return gelu(a[0]);
        case Unary::gelu_tanh: return gelu_tanh(a[0]);
      }
      break;
    case Kind::binary:
      switch (s.binary) {
        case Binary::add: return add(a[0], a[1]);
        case Binary::sub: return sub(a[0], a[1]);
        case Binary::mul: return mul(a[0], a[1]);
        case Binary::div: return div(a[0], a[1]);
        case Binary::maximum: return maximum(a[0], a[1]);
        case Binary::minimum: return minimum(a[0], a[1]);
      }
      break;
    case Kind::scalar:
      switch (s.binary) {
        case Binary::add: return add(a[0], s.scalar);
        case Binary::sub: return sub(a[0], s.scalar);
        case Binary::mul: return mul(a[0], s.scalar);
        default: return div(a[0], s.scalar);
      }
    case Kind::sum: return sum(a[0], s.dim, s.keepdim);
    case Kind::mean: return mean(a[0], s.dim, s.keepdim);
    case Kind::max: return defer::max(a[0], s.dim, s.keepdim);
    case Kind::softmax: return softmax(a[0], s.dim);
    case Kind::layer_norm: return layer_norm(a[0], a[1], a[2], s.scalar);
    case Kind::matmul: return matmul(a[0], a[1]);
    case Kind::transpose: return transpose(a[0]);
    default: break;
  }
  throw std::logic_error("graph_lang: not an op statement");
}

}  // namespace

std::optional<Shape> infer_shape(const Stmt& s, const std::vector<Shape>& a) {
  const auto norm = [](int dim, std::size_t rank) -> std::optional<int> {
    const int r = static_cast<int>(rank);
    if (r == 0 || dim < -r || dim >= r) return std::nullopt;
    return dim < 0 ? dim + r : dim;
  };
  switch (s.kind) {
    case Kind::rand:
    case Kind::pos: return s.shape;
    case Kind::unary:
    case Kind::scalar: return a[0];
    case Kind::binary: {
      const Shape& x = a[0];
      const Shape& y = a[1];
      const std::size_t r = std::max(x.size(), y.size());
      Shape out(r);
      for (std::size_t i = 0; i < r; ++i) {
        const int64_t p = i < r - x.size() ? 1 : x[i - (r - x.size())];
        const int64_t q = i < r - y.size() ? 1 : y[i - (r - y.size())];
        if (p != q && p != 1 && q != 1) return std::nullopt;
        out[i] = p == 1 ? q : p;
      }
      return out;
    }
    case Kind::sum:
    case Kind::mean:
    case Kind::max: {
      const auto d = norm(s.dim, a[0].size());
      if (!d) return std::nullopt;
      const auto k = static_cast<std::size_t>(*d);
      if (s.kind == Kind::max && a[0][k] == 0) return std::nullopt;
      Shape out = a[0];
      if (s.keepdim) out[k] = 1;
      else out.erase(out.begin() + *d);
      return out;
    }
    case Kind::softmax:
      if (!norm(s.dim, a[0].size())) return std::nullopt;
      return a[0];
    case Kind::layer_norm:
      if (a[0].empty() || a[1] != Shape{a[0].back()} || a[2] != Shape{a[0].back()}) return std::nullopt;
      return a[0];
    case Kind::matmul: {
      const Shape& x = a[0];
      const Shape& y = a[1];
      if (x.size() < 2 || x.size() > 3 || y.size() < 2 || y.size() > 3) return std::nullopt;
      if (y[y.size() - 2] != x.back()) return std::nullopt;
      if (x.size() == 3 && y.size() == 3 && x[0] != y[0]) return std::nullopt;
      Shape out;
      if (x.size() == 3) out.push_back(x[0]);
      else if (y.size() == 3) out.push_back(y[0]);
      out.push_back(x[x.size() - 2]);
      out.push_back(y.back());
      return out;
    }
    case Kind::transpose: {
      if (a[0].size() < 2) return std::nullopt;
      Shape out = a[0];
      std::swap(out[out.size() - 1], out[out.size() - 2]);
      return out;
    }
    default: return std::nullopt;
  }
}

int64_t op_cost(const Stmt& s, const std::vector<Shape>& a, const Shape& out) {
  int64_t n = 1;
  for (int64_t e : out) n *= e;
  if (s.kind == Kind::matmul) n *= std::max<int64_t>(a[0].back(), 1);
  else if (s.kind == Kind::sum || s.kind == Kind::mean || s.kind == Kind::max) {
    n = 1;
    for (int64_t e : a[0]) n *= e;
  }
  return n;
}

namespace {
}  // namespace

const char* unary_name(Unary u) noexcept { return kUnaryNames[static_cast<int>(u)]; }
const char* binary_name(Binary b) noexcept { return kBinaryNames[static_cast<int>(b)]; }

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

std::string to_text(const Program& p) {
  std::ostringstream out;
  const auto name = [&](int id) -> const std::string& { return p.names[static_cast<std::size_t>(id)]; };
  for (const Stmt& s : p.stmts) {
    if (s.out >= 0) out << name(s.out) << " = ";
    switch (s.kind) {
      case Kind::rand:
      case Kind::pos:
        out << (s.kind == Kind::rand ? "rand " : "pos ") << s.seed;
        for (int64_t e : s.shape) out << ' ' << e;
        break;
      case Kind::unary: out << unary_name(s.unary) << ' ' << name(s.args[0]); break;
      case Kind::binary: out << binary_name(s.binary) << ' ' << name(s.args[0]) << ' ' << name(s.args[1]); break;
      case Kind::scalar: out << binary_name(s.binary) << "s " << name(s.args[0]) << ' ' << float_text(s.scalar); break;
      case Kind::sum:
      case Kind::mean:
      case Kind::max:
        out << (s.kind == Kind::sum ? "sum " : s.kind == Kind::mean ? "mean " : "max ") << name(s.args[0]) << ' ' << s.dim
            << (s.keepdim ? " keep" : "");
        break;
      case Kind::softmax: out << "softmax " << name(s.args[0]) << ' ' << s.dim; break;
      case Kind::layer_norm:
        out << "layer_norm " << name(s.args[0]) << ' ' << name(s.args[1]) << ' ' << name(s.args[2]) << ' ' << float_text(s.scalar);
        break;
      case Kind::matmul: out << "matmul " << name(s.args[0]) << ' ' << name(s.args[1]); break;
      case Kind::transpose: out << "transpose " << name(s.args[0]); break;
      case Kind::mode: out << "mode " << (s.flag ? "eager" : "deferred"); break;
      case Kind::stream: out << "stream " << s.stream; break;
      case Kind::fusion: out << "fusion " << (s.flag ? "on" : "off"); break;
      case Kind::graphs: out << "graphs " << (s.flag ? "on" : "off"); break;
      case Kind::wait:
      case Kind::wait_all:
      case Kind::drop:
        out << (s.kind == Kind::wait ? "wait" : s.kind == Kind::drop ? "drop" : "wait_all");
        for (int a : s.args) out << ' ' << name(a);
        break;
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
  RunResult result;
  std::vector<std::optional<TensorAwait>> values(p.names.size());
  std::vector<Shape> shapes(p.names.size());
  std::vector<Stream> streams{default_stream(options.device)};
  for (int i = 1; i < kStreams; ++i) streams.push_back(Stream::create(options.device));
  int current = 0;
  bool eager = options.all_eager;
  auto observe = [&](int stmt, int id, const std::function<Tensor()>& get) {
    Observation o;
    o.stmt = stmt;
    o.id = id;
    o.name = p.names[static_cast<std::size_t>(id)];
    try {
      const Tensor t = get();
      o.shape = t.shape();
      o.values = to_vector(t);
      o.outcome = "ok";
      if (o.shape != shapes[static_cast<std::size_t>(id)])
        result.problems.push_back("'" + o.name + "' has shape " + shape_str(o.shape) + ", the shape rules say " +
                                  shape_str(shapes[static_cast<std::size_t>(id)]));
    } catch (...) {
      o.outcome = outcome_of(std::current_exception(), o.message);
    }
    result.observations.push_back(std::move(o));
  };
  for (std::size_t i = 0; i < p.stmts.size(); ++i) {
    const Stmt& s = p.stmts[i];
    const int stmt = static_cast<int>(i);
    StreamGuard on(streams[static_cast<std::size_t>(options.single_stream ? 0 : current)]);
    switch (s.kind) {
      case Kind::mode:
        if (!options.all_eager) eager = s.flag;
        continue;
      case Kind::stream: current = s.stream; continue;
      case Kind::fusion:
        if (options.apply_switches) set_fusion_enabled(s.flag);
        continue;
      case Kind::graphs:
        if (options.apply_switches) set_graphs_enabled(s.flag);
        continue;
      case Kind::drop: values[static_cast<std::size_t>(s.args[0])].reset(); continue;
      case Kind::wait: {
        if (options.skip_waits) continue;
        const auto& v = values[static_cast<std::size_t>(s.args[0])];
        if (!v) continue;  // undefined (its op call failed) or dropped
        observe(stmt, s.args[0], [&] { return wait(*v); });
        continue;
      }
      case Kind::wait_all: {
        if (options.skip_waits) continue;
        std::vector<TensorAwait> list;
        std::vector<int> ids;
        for (int a : s.args)
          if (const auto& v = values[static_cast<std::size_t>(a)]) {
            list.push_back(*v);
            ids.push_back(a);
          }
        if (list.empty()) continue;
        try {
          wait_all(list, streams[static_cast<std::size_t>(options.single_stream ? 0 : current)]);
        } catch (...) {
          // each error stays cached in its own Await; the observations below read them one by one
        }
        for (std::size_t k = 0; k < list.size(); ++k) observe(stmt, ids[k], [&] { return wait(list[k]); });
        continue;
      }
      default: break;
    }
    // An op call.
    std::vector<TensorAwait> args;
    bool missing = false;
    for (int a : s.args) {
      const auto& v = values[static_cast<std::size_t>(a)];
      if (!v) missing = true;
      else args.push_back(*v);
    }
    if (missing) continue;
    std::vector<Shape> arg_shapes;
    for (int a : s.args) arg_shapes.push_back(shapes[static_cast<std::size_t>(a)]);
    const std::optional<Shape> expected = infer_shape(s, arg_shapes);
    if (expected) {
      int64_t n = 1;
      for (int64_t e : *expected) n *= e;
      if (n > kMaxResultElements || op_cost(s, arg_shapes, *expected) > kMaxOpCost) continue;  // too slow to run: skipped
    }
    try {
      ModeGuard mode(eager ? Mode::eager : Mode::deferred);
      values[static_cast<std::size_t>(s.out)] = call_op(s, args, options.device);
      if (!expected) {
        result.problems.push_back("statement " + std::to_string(stmt) + " ('" + p.names[static_cast<std::size_t>(s.out)] +
                                  "'): the op accepted operands the shape rules reject");
        values[static_cast<std::size_t>(s.out)].reset();
      } else {
        shapes[static_cast<std::size_t>(s.out)] = *expected;
      }
    } catch (...) {
      Observation o;
      o.stmt = stmt;
      o.id = s.out;
      o.name = p.names[static_cast<std::size_t>(s.out)];
      o.outcome = outcome_of(std::current_exception(), o.message);
      result.observations.push_back(std::move(o));
    }
  }
  for (std::size_t id = 0; id < values.size(); ++id) {
    if (!values[id]) continue;
    result.held.emplace(static_cast<int>(id), *values[id]);
    if (options.wait_leftovers) observe(static_cast<int>(p.stmts.size()), static_cast<int>(id), [&] { return wait(*values[id]); });
  }
  for (Stream& s : streams) s.synchronize();
  return result;
}

std::string compare(const RunResult& a, const RunResult& b) {
  std::ostringstream out;
  const std::size_t n = std::min(a.observations.size(), b.observations.size());
  for (std::size_t i = 0; i < n; ++i) {
    const Observation& x = a.observations[i];
    const Observation& y = b.observations[i];
    const std::string where = "observation " + std::to_string(i) + " (statement " + std::to_string(x.stmt) + ", '" + x.name + "'): ";
    if (x.stmt != y.stmt || x.name != y.name) return where + "different statements: " + std::to_string(y.stmt) + " '" + y.name + "'";
    if (x.outcome != y.outcome) return where + x.outcome + " (" + x.message + ") vs " + y.outcome + " (" + y.message + ")";
    if (x.shape != y.shape) return where + "shape " + shape_str(x.shape) + " vs " + shape_str(y.shape);
    if (x.values.size() != y.values.size()) return where + "value counts differ";
    for (std::size_t k = 0; k < x.values.size(); ++k) {
      const float u = x.values[k], v = y.values[k];
      if (std::isnan(u) && std::isnan(v)) continue;
      if (std::bit_cast<uint32_t>(u) != std::bit_cast<uint32_t>(v) && !(u == 0.f && v == 0.f)) {
        out << where << "element " << k << ": " << u << " vs " << v;
        return out.str();
      }
    }
  }
  if (a.observations.size() != b.observations.size())
    return "observation counts differ: " + std::to_string(a.observations.size()) + " vs " + std::to_string(b.observations.size());
  return "";
}

}  // namespace defer::lang
