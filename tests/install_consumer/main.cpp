// Links against an installed defer and runs one deferred tensor round trip on the CPU.
// Exit 0 on success; a message on stderr and exit 1 otherwise.
#include <cstdio>
#include <exception>
#include <vector>

#include <defer/defer.hpp>

int main() try {
  const defer::Device cpu = defer::Device::cpu();
  const std::vector<float> input = {1.5f, -2.0f, 0.25f, 8.0f, 3.0f, -0.5f};

  // Deferred: a tensor made from the input, then its values copied back. Nothing runs yet.
  defer::Await<defer::Tensor> tensor =
      defer::awaitable([](const std::vector<float>& v, defer::Device d) { return defer::from_vector(v, {2, 3}, d); },
                       input, cpu);
  defer::Await<std::vector<float>> back = defer::then(tensor, [](const defer::Tensor& t) { return defer::to_vector(t); });
  if (tensor.is_ready() || back.is_ready()) {
    std::fprintf(stderr, "install_consumer: an Await ran before it was waited\n");
    return 1;
  }

  const std::vector<float>& out = defer::wait(back, defer::Stream::create(cpu));
  const defer::Tensor& t = defer::wait(tensor);
  if (out != input || t.shape() != defer::Shape{2, 3} || t.device() != cpu) {
    std::fprintf(stderr, "install_consumer: the round trip changed the tensor\n");
    return 1;
  }
  std::printf("install_consumer: defer round trip of %lld values on %s: ok\n", static_cast<long long>(t.numel()),
              t.device().str().c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "install_consumer: error: %s\n", e.what());
  return 1;
}
