#pragma once
// The safetensors file format (docs/api.md section 12), as the `safetensors` package writes it:
//
//   [8 bytes] N, the header's length, unsigned little-endian
//   [N bytes] the header: a JSON object, one entry per tensor,
//             "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
//             plus an optional "__metadata__": {string: string}; padded with spaces
//   [rest]    the data: each tensor's bytes, row-major, at [begin, end) of this section
//
// parse() is a pure function over the file's bytes (no I/O, no runtime), so that the loader and the
// fuzz target (fuzz/fuzz_safetensors.cpp) run exactly the same checks. It trusts nothing the file
// says: every length, offset and extent is checked against the bytes that are really there before it
// is used, so a hostile file can make it neither read out of bounds nor allocate more than a small
// multiple of the header's real size.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <defer/dtype.hpp>
#include <defer/tensor.hpp>

namespace defer::detail::safetensors {

// The largest header accepted: the Python package's own limit, so that every file it reads is read
// here too, and a length field of 2^64 - 1 is refused before anything is allocated for it.
inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

struct Entry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  int64_t numel = 0;
  std::uint64_t begin = 0, end = 0;  // the tensor's bytes: [begin, end) of the data section
};

struct Layout {
  std::uint64_t data_start = 0;  // the data section's offset in the file: 8 + N
  std::uint64_t data_size = 0;   // its length: the file's size - data_start
  std::vector<Entry> entries;    // sorted by name
};

// Parses and validates a whole safetensors file held in `file`. Throws defer::Error whose message
// names `file_name` and the fault: a file shorter than 8 bytes, a header length over kMaxHeaderBytes
// or past the end of the file, a header that is not JSON or not an object, nests deeper than the
// format does, or repeats a key; an entry that is not an object or lacks, or mistypes, "dtype",
// "shape" or "data_offsets"; a dtype that is unknown or that defer does not have; a negative extent;
// an element count or byte size that overflows int64; data_offsets with begin > end, or past the end
// of the data, or spanning other than numel * element size bytes; two tensors whose bytes overlap;
// a "__metadata__" that is not an object of strings. Gaps between tensors and trailing bytes are
// allowed (they are never read).
Layout parse(std::span<const unsigned char> file, const std::string& file_name);

// The format's name of a dtype ("F32", "BF16", "BOOL", ...).
const char* format_name(DType dtype) noexcept;
// The dtype of a format name; nullopt for names defer does not have (known to the format or not).
std::optional<DType> dtype_from_format_name(std::string_view name) noexcept;

}  // namespace defer::detail::safetensors
