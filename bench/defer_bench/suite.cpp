// The standard suite: which workloads run, at which sizes.
#include "workload.hpp"

namespace defer_bench {

std::vector<Workload> standard_suite(const Options& options, defer::Device device) {
  std::vector<BlockSize> blocks;
  if (options.block) {
    blocks.push_back(*options.block);
  } else if (options.quick) {
    blocks.push_back(BlockSize{1, 32, 128, 4});
  } else {
    blocks.push_back(BlockSize{1, 64, 256, 4});    // small: bound by launches and host work
    blocks.push_back(BlockSize{1, 128, 768, 12});  // BERT-base's geometry at sequence length 128
  }
  std::vector<Workload> all;
  add_elementwise_workloads(all, options.quick, device);
  add_reduction_workloads(all, options.quick, device);
  add_matmul_workloads(all, options.quick, device);
  add_view_workloads(all, options.quick, device);
  add_transformer_workloads(all, blocks, device);
  std::erase_if(all, [&](const Workload& w) {
    return !options.filter.empty() && (w.name + "/" + w.size).find(options.filter) == std::string::npos;
  });
  return all;
}

}  // namespace defer_bench
