#include "interop/safetensors_format.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <unordered_set>
#include <utility>

#include <nlohmann/json.hpp>

#include <defer/errors.hpp>

namespace defer::detail::safetensors {

namespace {

using nlohmann::json;

struct NamedDType {
  const char* name;
  DType dtype;
};
// The format's names of defer's dtypes.
constexpr std::array<NamedDType, 6> kSupported = {{{"F32", DType::f32},
                                                   {"I32", DType::i32},
                                                   {"F16", DType::f16},
                                                   {"BF16", DType::bf16},
                                                   {"I64", DType::i64},
                                                   {"BOOL", DType::boolean}}};
// The format's other names: a file using them is valid, defer just cannot hold its tensor, which
// deserves a different message from a name the format does not have.
constexpr std::array<std::string_view, 16> kUnsupported = {"F64",     "I8",      "U8",      "I16",
                                                           "U16",     "U32",     "U64",     "F8_E4M3",
                                                           "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2",
                                                           "F4",      "C64",     "C128",    "F8_E4M3FNUZ"};

// The container depth the format uses: the header object (0), an entry (1), its shape and
// data_offsets arrays (2). Refusing deeper containers as they open bounds the parse's memory and
// the recursion of destroying the parsed value, whatever the header holds.
constexpr int kMaxContainerDepth = 2;

class Faults {
 public:
  explicit Faults(const std::string& file_name) : prefix_("safetensors file '" + file_name + "': ") {}
  [[noreturn]] void fail(const std::string& fault) const { throw Error(prefix_ + fault); }

 private:
  std::string prefix_;
};

// Text from the file, fit for a message: at most `limit` bytes of it (a name may be megabytes long),
// control bytes escaped as \xHH, and bytes >= 0x80 too unless the text is known to be UTF-8 (the JSON
// parser validated it), so that a message never carries a broken or terminal-controlling sequence.
std::string printable(std::string_view text, bool utf8, std::size_t limit = 120) {
  std::size_t keep = std::min(text.size(), limit);
  if (utf8)
    while (keep > 0 && keep < text.size() && (static_cast<unsigned char>(text[keep]) & 0xc0) == 0x80) --keep;
  std::string out;
  for (const char c : text.substr(0, keep)) {
    const auto b = static_cast<unsigned char>(c);
    if (b < 0x20 || b == 0x7f || (b >= 0x80 && !utf8)) {
      constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[b >> 4];
      out += kHex[b & 15];
    } else {
      out += c;
    }
  }
  if (keep < text.size()) out += "...";
  return out;
}

std::string in_quotes(const std::string& name) {
  std::string out = "'";  // appended, not "'" + ...: GCC 12 warns (-Wrestrict) falsely on that
  out += printable(name, true);
  return out + "'";
}
std::string tensor(const std::string& name) { return "tensor " + in_quotes(name); }
// A shape for a message: a header may give one a million extents.
std::string shape_text(const Shape& shape) { return printable(shape_str(shape), true, 200); }
std::string range_str(std::uint64_t begin, std::uint64_t end) {
  std::string s = "[";  // appended, as in_quotes
  s += std::to_string(begin);
  s += ", ";
  s += std::to_string(end);
  return s + "]";
}

std::uint64_t read_le64(const unsigned char* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// The header as JSON. nlohmann keeps the last of duplicate keys silently, so the parser's callback
// watches every key of every open object (a duplicate tensor name would otherwise hide a tensor, and
// a duplicate field make the entry ambiguous); it also refuses containers deeper than the format's.
json parse_json(std::string_view text, const Faults& faults) {
  std::vector<std::unordered_set<std::string>> open_objects;  // the keys seen in each open object
  std::string entry;                                          // the tensor name whose entry is open
  auto watch = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth > kMaxContainerDepth)
          faults.fail("the header nests containers deeper than the format's " + std::to_string(kMaxContainerDepth + 1) +
                      " levels");
        if (event == json::parse_event_t::object_start) open_objects.emplace_back();
        break;
      case json::parse_event_t::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (depth == 1) entry = key;
        if (!open_objects.back().insert(key).second) {
          if (depth == 1) faults.fail("duplicate tensor name " + in_quotes(key) + " in the header");
          faults.fail("duplicate key " + in_quotes(key) + " in the entry of " + in_quotes(entry));
        }
        break;
      }
      case json::parse_event_t::object_end:
        open_objects.pop_back();
        break;
      default:
        break;
    }
    return true;
  };
  // nlohmann stops at a NUL byte as if the input ended there, which would accept "{}\0<anything>";
  // a NUL is never part of JSON text (inside a string it must be escaped).
  if (const std::size_t nul = text.find('\0'); nul != std::string_view::npos)
    faults.fail("the header is not valid JSON: a NUL byte at offset " + std::to_string(nul));
  try {
    return json::parse(text.begin(), text.end(), watch);
  } catch (const json::exception& e) {
    faults.fail("the header is not valid JSON: " + printable(e.what(), false, 300));
  }
}

// A JSON integer as int64, or nullopt when it is not an integer or does not fit.
std::optional<int64_t> as_int64(const json& v) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  return std::nullopt;
}

const json& field(const json& entry, const char* key, const std::string& name, const Faults& faults) {
  const auto it = entry.find(key);
  if (it == entry.end()) faults.fail(tensor(name) + " has no \"" + key + "\"");
  return *it;
}

DType parse_dtype(const json& v, const std::string& name, const Faults& faults) {
  if (!v.is_string()) faults.fail(tensor(name) + ": \"dtype\" is not a string");
  const std::string& s = v.get_ref<const std::string&>();
  if (const auto dtype = dtype_from_format_name(s)) return *dtype;
  if (std::find(kUnsupported.begin(), kUnsupported.end(), s) != kUnsupported.end())
    faults.fail("unsupported dtype " + s + " of " + tensor(name) + " (defer has F32, I32, F16, BF16, I64 and BOOL)");
  faults.fail("unknown dtype " + in_quotes(s) + " of " + tensor(name));
}

Shape parse_shape(const json& v, const std::string& name, const Faults& faults) {
  if (!v.is_array()) faults.fail(tensor(name) + ": \"shape\" is not an array");
  Shape shape;
  shape.reserve(v.size());  // the array's real length: bounded by the header's bytes
  for (const json& extent : v) {
    const auto e = as_int64(extent);
    if (!e) {
      if (extent.is_number_integer()) faults.fail(tensor(name) + ": an extent of its \"shape\" overflows int64");
      faults.fail(tensor(name) + ": \"shape\" is not an array of integers");
    }
    if (*e < 0) faults.fail(tensor(name) + " has a negative extent in its shape (" + std::to_string(*e) + ")");
    shape.push_back(*e);
  }
  return shape;
}

std::pair<std::uint64_t, std::uint64_t> parse_offsets(const json& v, const std::string& name, const Faults& faults) {
  if (!v.is_array() || v.size() != 2 || !v[0].is_number_integer() || !v[1].is_number_integer())
    faults.fail(tensor(name) + ": \"data_offsets\" is not an array of two integers [begin, end]");
  // nlohmann reads a non-negative literal as unsigned, a negative one (and -0) as signed.
  const auto offset = [&](const json& o) -> std::uint64_t {
    if (o.is_number_unsigned()) return o.get<std::uint64_t>();
    const int64_t s = o.get<int64_t>();
    if (s < 0) faults.fail(tensor(name) + ": \"data_offsets\" " + v.dump() + " has a negative offset");
    return static_cast<std::uint64_t>(s);
  };
  return {offset(v[0]), offset(v[1])};
}

Entry parse_entry(const std::string& name, const json& v, std::uint64_t data_size, const Faults& faults) {
  if (!v.is_object()) faults.fail("the entry of " + tensor(name) + " is not a JSON object");
  Entry e;
  e.name = name;
  e.dtype = parse_dtype(field(v, "dtype", name, faults), name, faults);
  e.shape = parse_shape(field(v, "shape", name, faults), name, faults);
  std::tie(e.begin, e.end) = parse_offsets(field(v, "data_offsets", name, faults), name, faults);

  int64_t numel = 1;
  for (const int64_t extent : e.shape)
    if (__builtin_mul_overflow(numel, extent, &numel))
      faults.fail("the element count of " + tensor(name) + " (shape " + shape_text(e.shape) + ") overflows int64");
  int64_t bytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<int64_t>(dtype_size(e.dtype)), &bytes))
    faults.fail("the byte size of " + tensor(name) + " (shape " + shape_text(e.shape) + ") overflows int64");
  e.numel = numel;

  const std::string offsets = "data_offsets " + range_str(e.begin, e.end) + " of " + tensor(name);
  if (e.begin > e.end) faults.fail(offsets + " have begin > end");
  if (e.end > data_size)
    faults.fail(offsets + " run past the end of the data (" + std::to_string(data_size) + " bytes)");
  if (e.end - e.begin != static_cast<std::uint64_t>(bytes))
    faults.fail(offsets + " span " + std::to_string(e.end - e.begin) + " bytes, but its shape " + shape_text(e.shape) +
                " of " + format_name(e.dtype) + " needs " + std::to_string(bytes));
  return e;
}

void check_metadata(const json& v, const Faults& faults) {
  if (!v.is_object()) faults.fail("\"__metadata__\" is not a JSON object");
  for (const auto& [key, value] : v.items())
    if (!value.is_string()) faults.fail("\"__metadata__\" entry " + in_quotes(key) + " is not a string");
}

// Tensors may not share bytes: a write through one would change another, and a file that claims it
// is not one the format's writers make. Empty tensors span nothing and overlap nothing.
void check_disjoint(const std::vector<Entry>& entries, const Faults& faults) {
  std::vector<const Entry*> spans;
  for (const Entry& e : entries)
    if (e.begin != e.end) spans.push_back(&e);
  // Stable: ties keep the names' order, so that the message is the same on every run.
  std::stable_sort(spans.begin(), spans.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  // Sorted by begin, some two ranges overlap exactly when two neighbours do.
  for (std::size_t i = 1; i < spans.size(); ++i) {
    const Entry& a = *spans[i - 1];
    const Entry& b = *spans[i];
    if (b.begin < a.end)
      faults.fail("the data of " + tensor(a.name) + " " + range_str(a.begin, a.end) + " and of " + tensor(b.name) + " " +
                  range_str(b.begin, b.end) + " overlap");
  }
}

}  // namespace

const char* format_name(DType dtype) noexcept {
  for (const NamedDType& d : kSupported)
    if (d.dtype == dtype) return d.name;
  return "?";
}

std::optional<DType> dtype_from_format_name(std::string_view name) noexcept {
  for (const NamedDType& d : kSupported)
    if (name == d.name) return d.dtype;
  return std::nullopt;
}

Layout parse(std::span<const unsigned char> file, const std::string& file_name) {
  const Faults faults(file_name);
  if (file.size() < 8)
    faults.fail("truncated: " + std::to_string(file.size()) + " bytes, shorter than the 8-byte header length");
  const std::uint64_t header_size = read_le64(file.data());
  if (header_size > kMaxHeaderBytes)
    faults.fail("header length " + std::to_string(header_size) + " exceeds the format's limit of " +
                std::to_string(kMaxHeaderBytes) + " bytes");
  if (header_size > file.size() - 8)
    faults.fail("header length " + std::to_string(header_size) + " runs past the end of the file (" +
                std::to_string(file.size()) + " bytes)");

  const std::string_view text(reinterpret_cast<const char*>(file.data() + 8), header_size);
  const json header = parse_json(text, faults);
  if (!header.is_object()) faults.fail("the header is not a JSON object");

  Layout layout;
  layout.data_start = 8 + header_size;
  layout.data_size = file.size() - layout.data_start;
  for (const auto& [name, value] : header.items()) {  // a JSON object iterates in key order
    if (name == "__metadata__") {
      check_metadata(value, faults);  // allowed, and of no use to defer
      continue;
    }
    layout.entries.push_back(parse_entry(name, value, layout.data_size, faults));
  }
  check_disjoint(layout.entries, faults);
  return layout;
}

}  // namespace defer::detail::safetensors
