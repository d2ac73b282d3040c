#include "pcap_writer.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

namespace isoproxy {
namespace {

// Classic pcap (not pcapng): every tool reads it, and its headers are simple
// enough to write directly, which lets short writes be reported (libpcap's
// pcap_dump() returns nothing).
constexpr std::uint32_t kPcapMagicMicro = 0xa1b2c3d4;
constexpr std::uint16_t kPcapVersionMajor = 2;
constexpr std::uint16_t kPcapVersionMinor = 4;
constexpr std::uint32_t kSnapLen = 65535;
constexpr std::uint32_t kLinktypeRaw = 101;  // LINKTYPE_RAW: packets start at the IP header

// Keeps IPv4 total length and IPv6 payload length (16 bits) in range with
// room for headers.
constexpr std::size_t kMaxSegmentPayload = 65000;

constexpr std::size_t kIpv4Header = 20;
constexpr std::size_t kIpv6Header = 40;
constexpr std::size_t kTcpHeader = 20;
constexpr std::uint8_t kIpProtoTcp = 6;
constexpr std::uint8_t kTtl = 64;
constexpr std::uint16_t kWindow = 65535;

constexpr std::uint8_t kTcpFin = 0x01;
constexpr std::uint8_t kTcpSyn = 0x02;
constexpr std::uint8_t kTcpPsh = 0x08;
constexpr std::uint8_t kTcpAck = 0x10;

void put16(std::uint8_t* p, std::uint16_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 8);
  p[1] = static_cast<std::uint8_t>(v);
}
void put32(std::uint8_t* p, std::uint32_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}
// pcap file headers are in the writer's byte order; little-endian is fixed
// here so that output is identical on every host.
void put16le(std::uint8_t* p, std::uint16_t v) {
  p[0] = static_cast<std::uint8_t>(v);
  p[1] = static_cast<std::uint8_t>(v >> 8);
}
void put32le(std::uint8_t* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

// RFC 1071 one's complement sum, continued from `sum`; not yet folded.
std::uint32_t sum16(std::uint32_t sum, const std::uint8_t* p, std::size_t n) {
  for (std::size_t i = 0; i + 1 < n; i += 2)
    sum += static_cast<std::uint32_t>((p[i] << 8) | p[i + 1]);
  if (n % 2 != 0) sum += static_cast<std::uint32_t>(p[n - 1] << 8);
  return sum;
}
std::uint16_t fold(std::uint32_t sum) {
  while (sum >> 16 != 0) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<std::uint16_t>(~sum);
}

struct Flow {
  bool ipv6 = false;
  std::array<std::uint8_t, 16> client_addr{};
  std::array<std::uint8_t, 16> server_addr{};
  std::uint16_t client_port = 0;
  std::uint16_t server_port = 0;
  std::uint32_t client_next = 0;  // sequence number of the client's next octet
  std::uint32_t server_next = 0;
  bool closed = false;
};

}  // namespace

struct PcapWriter::Impl {
  std::FILE* file = nullptr;
  std::string path;
  std::uint64_t bytes = 0;
  std::uint16_t ip_id = 0;
  std::vector<Flow> flows;
  std::vector<std::uint8_t> packet;  // reused per segment

  ~Impl() {
    if (file != nullptr) std::fclose(file);
  }

  Status<> write_raw(const std::uint8_t* data, std::size_t n) {
    if (std::fwrite(data, 1, n, file) != n) {
      return unexpected(Error{"pcap-write", "cannot write " + path + ": " + std::strerror(errno)});
    }
    bytes += n;
    return Ok{};
  }

  Status<> write_segment(const Flow& f, bool from_client, std::uint8_t flags, std::uint32_t seq,
                         std::uint32_t ack, codec::Bytes payload, double time);
};

namespace {

struct Timestamp {
  std::uint32_t sec = 0;
  std::uint32_t usec = 0;
};

Timestamp to_timestamp(double time) {
  if (!(time > 0)) return {};  // negative or NaN: the epoch rather than garbage
  constexpr double kMaxSec = std::numeric_limits<std::uint32_t>::max();
  if (time >= kMaxSec) return {std::numeric_limits<std::uint32_t>::max(), 999999};
  double whole = std::floor(time);
  auto usec = static_cast<std::uint32_t>(std::llround((time - whole) * 1e6));
  if (usec >= 1000000) {  // rounding carried into the next second
    usec -= 1000000;
    whole += 1;
  }
  return {static_cast<std::uint32_t>(whole), usec};
}

}  // namespace

Status<> PcapWriter::Impl::write_segment(const Flow& f, bool from_client, std::uint8_t flags,
                                         std::uint32_t seq, std::uint32_t ack, codec::Bytes payload,
                                         double time) {
  const std::size_t ip_header = f.ipv6 ? kIpv6Header : kIpv4Header;
  const std::size_t tcp_length = kTcpHeader + payload.size();
  const std::size_t total = ip_header + tcp_length;
  packet.assign(total, 0);
  std::uint8_t* ip = packet.data();
  std::uint8_t* tcp = ip + ip_header;
  const std::size_t addr_len = f.ipv6 ? 16 : 4;
  const std::uint8_t* src = from_client ? f.client_addr.data() : f.server_addr.data();
  const std::uint8_t* dst = from_client ? f.server_addr.data() : f.client_addr.data();

  if (f.ipv6) {
    ip[0] = 0x60;  // version 6, traffic class and flow label 0
    put16(ip + 4, static_cast<std::uint16_t>(tcp_length));
    ip[6] = kIpProtoTcp;
    ip[7] = kTtl;
    std::copy_n(src, 16, ip + 8);
    std::copy_n(dst, 16, ip + 24);
  } else {
    ip[0] = 0x45;  // version 4, IHL 5
    put16(ip + 2, static_cast<std::uint16_t>(total));
    put16(ip + 4, ip_id++);
    put16(ip + 6, 0x4000);  // DF: segments are never fragmented
    ip[8] = kTtl;
    ip[9] = kIpProtoTcp;
    std::copy_n(src, 4, ip + 12);
    std::copy_n(dst, 4, ip + 16);
    put16(ip + 10, fold(sum16(0, ip, kIpv4Header)));
  }

  put16(tcp + 0, from_client ? f.client_port : f.server_port);
  put16(tcp + 2, from_client ? f.server_port : f.client_port);
  put32(tcp + 4, seq);
  put32(tcp + 8, (flags & kTcpAck) != 0 ? ack : 0);
  tcp[12] = static_cast<std::uint8_t>((kTcpHeader / 4) << 4);
  tcp[13] = flags;
  put16(tcp + 14, kWindow);
  std::copy(payload.begin(), payload.end(), tcp + kTcpHeader);

  // Pseudo-header (RFC 9293 §3.1 for IPv4, RFC 8200 §8.1 for IPv6): the
  // addresses, the protocol and the TCP length; the order of the summed
  // words does not matter to a one's complement sum.
  std::uint32_t sum = sum16(0, src, addr_len);
  sum = sum16(sum, dst, addr_len);
  sum += kIpProtoTcp;
  sum += static_cast<std::uint32_t>(tcp_length & 0xffff);
  sum += static_cast<std::uint32_t>(tcp_length >> 16);
  sum = sum16(sum, tcp, tcp_length);
  put16(tcp + 16, fold(sum));

  const Timestamp ts = to_timestamp(time);
  std::array<std::uint8_t, 16> record{};
  put32le(record.data() + 0, ts.sec);
  put32le(record.data() + 4, ts.usec);
  put32le(record.data() + 8, static_cast<std::uint32_t>(total));
  put32le(record.data() + 12, static_cast<std::uint32_t>(total));
  if (auto r = write_raw(record.data(), record.size()); !r) return r;
  return write_raw(packet.data(), packet.size());
}

PcapWriter::PcapWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PcapWriter::~PcapWriter() = default;

Result<std::unique_ptr<PcapWriter>> PcapWriter::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->file = std::fopen(path.c_str(), "wb");
  if (impl->file == nullptr) {
    return unexpected(Error{"pcap-open", "cannot open " + path + ": " + std::strerror(errno)});
  }
  std::array<std::uint8_t, 24> header{};
  put32le(header.data() + 0, kPcapMagicMicro);
  put16le(header.data() + 4, kPcapVersionMajor);
  put16le(header.data() + 6, kPcapVersionMinor);
  // Bytes 8..15: thiszone and sigfigs, both 0 by convention.
  put32le(header.data() + 16, kSnapLen);
  put32le(header.data() + 20, kLinktypeRaw);
  if (auto r = impl->write_raw(header.data(), header.size()); !r) return unexpected(r.error());
  return std::unique_ptr<PcapWriter>(new PcapWriter(std::move(impl)));
}

Result<int> PcapWriter::add_flow(const PcapFlow& flow, double time) {
  Flow f;
  f.client_port = flow.client_port;
  f.server_port = flow.server_port;
  auto parse = [](const std::string& text, std::array<std::uint8_t, 16>& out) -> int {
    if (inet_pton(AF_INET, text.c_str(), out.data()) == 1) return AF_INET;
    if (inet_pton(AF_INET6, text.c_str(), out.data()) == 1) return AF_INET6;
    return 0;
  };
  const int client_family = parse(flow.client_ip, f.client_addr);
  const int server_family = parse(flow.server_ip, f.server_addr);
  if (client_family == 0 || server_family == 0) {
    const std::string& bad = client_family == 0 ? flow.client_ip : flow.server_ip;
    return unexpected(Error{"pcap-address", "not an IPv4 or IPv6 address: \"" + bad + "\""});
  }
  if (client_family != server_family) {
    return unexpected(Error{"pcap-address", "client " + flow.client_ip + " and server " +
                                                flow.server_ip + " are of different families"});
  }
  f.ipv6 = client_family == AF_INET6;

  // Deterministic ISNs, so that the same calls give the same file; spread
  // over the sequence space (some flows wrap) rather than all starting at 0.
  // The multiplier is odd: different ordinals (mod 2^32) give different ISNs.
  const auto index = static_cast<std::uint32_t>(impl_->flows.size());
  const std::uint32_t ordinal = flow.ordinal != 0 ? flow.ordinal : index + 1;
  const std::uint32_t client_isn = 0x9e3779b9u * ordinal;
  const std::uint32_t server_isn = client_isn ^ 0x5bd1e995u;

  // Three-way handshake (RFC 9293 §3.5).
  if (auto r = impl_->write_segment(f, true, kTcpSyn, client_isn, 0, {}, time); !r) {
    return unexpected(r.error());
  }
  if (auto r =
          impl_->write_segment(f, false, kTcpSyn | kTcpAck, server_isn, client_isn + 1, {}, time);
      !r) {
    return unexpected(r.error());
  }
  f.client_next = client_isn + 1;
  f.server_next = server_isn + 1;
  if (auto r = impl_->write_segment(f, true, kTcpAck, f.client_next, f.server_next, {}, time); !r) {
    return unexpected(r.error());
  }
  impl_->flows.push_back(f);
  return static_cast<int>(index);
}

namespace {

Result<Flow*> find_flow(std::vector<Flow>& flows, int flow) {
  if (flow < 0 || static_cast<std::size_t>(flow) >= flows.size()) {
    return unexpected(Error{"pcap-flow", "no flow " + std::to_string(flow)});
  }
  Flow& f = flows[static_cast<std::size_t>(flow)];
  if (f.closed)
    return unexpected(Error{"pcap-flow", "flow " + std::to_string(flow) + " is closed"});
  return &f;
}

}  // namespace

Status<> PcapWriter::write(int flow, bool from_client, codec::Bytes payload, double time) {
  auto found = find_flow(impl_->flows, flow);
  if (!found) return unexpected(found.error());
  Flow& f = **found;
  std::uint32_t& seq = from_client ? f.client_next : f.server_next;
  const std::uint32_t ack = from_client ? f.server_next : f.client_next;
  while (!payload.empty()) {
    const codec::Bytes segment = payload.first(std::min(payload.size(), kMaxSegmentPayload));
    if (auto r = impl_->write_segment(f, from_client, kTcpPsh | kTcpAck, seq, ack, segment, time);
        !r) {
      return r;
    }
    seq += static_cast<std::uint32_t>(segment.size());
    payload = payload.subspan(segment.size());
  }
  return Ok{};
}

Status<> PcapWriter::close_flow(int flow, double time) {
  auto found = find_flow(impl_->flows, flow);
  if (!found) return unexpected(found.error());
  Flow& f = **found;
  // Client FIN, server FIN+ACK of it, client ACK: each FIN takes one
  // sequence number (RFC 9293 §3.6).
  if (auto r =
          impl_->write_segment(f, true, kTcpFin | kTcpAck, f.client_next, f.server_next, {}, time);
      !r) {
    return r;
  }
  ++f.client_next;
  if (auto r =
          impl_->write_segment(f, false, kTcpFin | kTcpAck, f.server_next, f.client_next, {}, time);
      !r) {
    return r;
  }
  ++f.server_next;
  if (auto r = impl_->write_segment(f, true, kTcpAck, f.client_next, f.server_next, {}, time); !r) {
    return r;
  }
  f.closed = true;
  return Ok{};
}

std::uint64_t PcapWriter::bytes_written() const { return impl_->bytes; }

Status<> PcapWriter::flush() {
  if (std::fflush(impl_->file) != 0) {
    return unexpected(
        Error{"pcap-write", "cannot write " + impl_->path + ": " + std::strerror(errno)});
  }
  return Ok{};
}

}  // namespace isoproxy
