// Writes every row of ../shared/vectors/frames.tsv as a seed file for the
// codec fuzzer: `fuzz_seeds DIR [CAPTURE_DIR]`. The fuzzer's first input byte
// chooses the split stride, so each seed is written with a few leading bytes.
// With CAPTURE_DIR, each row is also written as a seed for capture_fuzz: a
// handshake, the frame from the client in segments, the server's ACK.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

#include "support/vectors.h"

namespace {

// One segment in capture_fuzz's input format (see capture_fuzz.cpp).
void segment(std::vector<std::uint8_t>& out, bool from_server, std::uint8_t tcp_flags, std::uint32_t seq,
             std::uint32_t ack, const std::uint8_t* payload, std::size_t len) {
  out.push_back(static_cast<std::uint8_t>((from_server ? 1 : 0) | (tcp_flags << 2)));
  out.push_back(static_cast<std::uint8_t>(seq >> 8));
  out.push_back(static_cast<std::uint8_t>(seq));
  out.push_back(static_cast<std::uint8_t>(ack >> 8));
  out.push_back(static_cast<std::uint8_t>(ack));
  out.push_back(static_cast<std::uint8_t>(len));
  out.insert(out.end(), payload, payload + len);
}

std::vector<std::uint8_t> capture_seed(const std::vector<std::uint8_t>& frame) {
  constexpr std::uint8_t kSyn = 0x02, kPsh = 0x08, kAck = 0x10;
  std::vector<std::uint8_t> out;
  segment(out, false, kSyn, 0, 0, nullptr, 0);
  segment(out, true, kSyn | kAck, 0, 1, nullptr, 0);
  std::uint32_t seq = 1;
  for (std::size_t off = 0; off < frame.size(); off += 200) {
    const std::size_t n = std::min<std::size_t>(200, frame.size() - off);
    segment(out, false, kPsh | kAck, seq, 1, frame.data() + off, n);
    seq += static_cast<std::uint32_t>(n);
  }
  segment(out, true, kAck, 1, seq, nullptr, 0);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: fuzz_seeds DIR [CAPTURE_DIR]\n");
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
      if (argc == 3) {
        const auto seed = capture_seed(v.bytes());
        std::ofstream f(std::string(argv[2]) + "/" + v.id, std::ios::binary);
        f.write(reinterpret_cast<const char*>(seed.data()), static_cast<std::streamsize>(seed.size()));
        if (!f) {
          std::fprintf(stderr, "fuzz_seeds: cannot write to %s\n", argv[2]);
          return 1;
        }
      }
    }
    std::printf("fuzz_seeds: %d seeds from the vectors\n", n);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
