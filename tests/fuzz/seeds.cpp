// Writes every row of ../shared/vectors/frames.tsv as a seed file for the
// codec fuzzer: `fuzz_seeds DIR`. The fuzzer's first input byte chooses the
// split stride, so each seed is written with a few leading bytes.
#include <cstdio>
#include <exception>
#include <fstream>
#include <string>

#include "support/vectors.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 2;
  }
  try {
    int n = 0;
    for (const auto& v : isoproxy::test::load_vectors()) {
      for (std::uint8_t stride : {0x00, 0x03, 0xFF}) {
        std::ofstream f(std::string(argv[1]) + "/" + v.id + "-" + std::to_string(stride), std::ios::binary);
        auto bytes = v.bytes();
        f.put(static_cast<char>(stride));
        f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        if (!f) {
          std::fprintf(stderr, "fuzz_seeds: cannot write to %s\n", argv[1]);
          return 1;
        }
        ++n;
      }
    }
    std::printf("fuzz_seeds: %d seeds from the vectors\n", n);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
