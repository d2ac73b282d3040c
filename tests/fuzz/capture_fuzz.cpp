// libFuzzer target over `isoproxy decode --pcap`: the TCP reassembler (holes,
// reordering, retransmission, ACK-covered gaps, RST, FIN, SYN and tuple
// reuse) and the decoder's resynchronisation after a midway join, a gap or
// a framing error. Captures come from the field, so any crash, sanitizer
// report or abort() fails.
//
// The input is not a pcap file (libpcap parses those, not us) but a list of
// TCP segments of one or two conversations, each written as
//   flags (1 octet: bit 0 direction, bit 1 second conversation, bits 2-7 TCP
//          FIN SYN RST PSH ACK URG), seq offset (2, big endian), ack offset
//          (2), payload length (1), payload
// which this target wraps in IPv4 and a classic pcap file (LINKTYPE_RAW),
// so that the fuzzer spends its time on stream states rather than headers.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "decode_cmd.h"

namespace {

void put16(std::vector<std::uint8_t>& v, std::uint32_t x) {
  v.push_back(static_cast<std::uint8_t>(x >> 8));
  v.push_back(static_cast<std::uint8_t>(x));
}
void put32(std::vector<std::uint8_t>& v, std::uint32_t x) {
  put16(v, x >> 16);
  put16(v, x & 0xFFFF);
}
void put32le(std::vector<std::uint8_t>& v, std::uint32_t x) {
  for (int i = 0; i < 4; ++i) v.push_back(static_cast<std::uint8_t>(x >> (8 * i)));
}

std::vector<std::uint8_t> capture(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> out;
  put32le(out, 0xa1b2c3d4);
  out.insert(out.end(), {2, 0, 4, 0});  // version 2.4
  put32le(out, 0);
  put32le(out, 0);
  put32le(out, 65535);
  put32le(out, 101);  // LINKTYPE_RAW
  std::size_t i = 0;
  std::uint32_t n = 0;
  // Initial sequence numbers near the wrap, so that it is crossed too.
  const std::uint32_t isn[2] = {0xFFFFF000u, 0x7FFFFFF0u};
  while (i + 6 <= size) {
    const std::uint8_t f = data[i];
    const std::uint32_t seq_off = (std::uint32_t{data[i + 1]} << 8) | data[i + 2];
    const std::uint32_t ack_off = (std::uint32_t{data[i + 3]} << 8) | data[i + 4];
    std::size_t len = data[i + 5];
    i += 6;
    if (len > size - i) len = size - i;
    const bool from_server = (f & 1) != 0;
    const std::uint8_t host = (f & 2) != 0 ? 3 : 1;  // the second conversation's client
    const std::uint8_t flags = static_cast<std::uint8_t>(f >> 2);
    std::vector<std::uint8_t> tcp;
    put16(tcp, from_server ? 102 : 40000);
    put16(tcp, from_server ? 40000 : 102);
    put32(tcp, isn[from_server ? 1 : 0] + seq_off);
    put32(tcp, isn[from_server ? 0 : 1] + ack_off);
    tcp.push_back(0x50);
    tcp.push_back(flags);
    put16(tcp, 65535);
    put16(tcp, 0);
    put16(tcp, 0);
    tcp.insert(tcp.end(), data + i, data + i + len);
    i += len;
    std::vector<std::uint8_t> ip = {0x45, 0};
    put16(ip, static_cast<std::uint32_t>(20 + tcp.size()));
    put16(ip, 0);
    put16(ip, 0x4000);
    ip.insert(ip.end(), {64, 6, 0, 0});
    const std::uint8_t client[4] = {10, 0, 0, host}, server[4] = {10, 0, 0, 2};
    ip.insert(ip.end(), from_server ? server : client, (from_server ? server : client) + 4);
    ip.insert(ip.end(), from_server ? client : server, (from_server ? client : server) + 4);
    ip.insert(ip.end(), tcp.begin(), tcp.end());
    put32le(out, ++n);
    put32le(out, 0);
    put32le(out, static_cast<std::uint32_t>(ip.size()));
    put32le(out, static_cast<std::uint32_t>(ip.size()));
    out.insert(out.end(), ip.begin(), ip.end());
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::vector<std::uint8_t> file = capture(data, size);
  const int fd = ::memfd_create("capture", MFD_CLOEXEC);
  if (fd < 0) std::abort();
  if (::write(fd, file.data(), file.size()) != static_cast<ssize_t>(file.size())) std::abort();
  isoproxy::DecodeCmdOptions o;
  o.pcap = "/proc/self/fd/" + std::to_string(fd);
  for (const bool json : {false, true}) {
    o.json = json;
    std::istringstream in;
    std::ostringstream out, err;
    const int rc = isoproxy::run_decode(o, in, out, err);
    if (rc != 0 && rc != 1) std::abort();  // 2 is for input that cannot be read: ours always can
  }
  ::close(fd);
  return 0;
}
