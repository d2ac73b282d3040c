#include "pcap_reader.h"

#include <arpa/inet.h>
#include <pcap/pcap.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <compare>
#include <deque>
#include <map>
#include <memory>
#include <utility>

namespace isoproxy {
namespace {

// Out-of-order payload held per direction while waiting for a hole to fill.
// Beyond this the missing segment is taken as never captured: the hole is
// skipped (with a notice) so one lost packet cannot stall a long capture.
constexpr std::size_t kMaxHeldBytes = std::size_t{16} << 20;
// First fragments remembered so that their later fragments can be reported
// on the right stream; fragments are rare, so a small bound is plenty.
constexpr std::size_t kMaxTrackedFragments = 4096;

constexpr std::uint8_t kTcpFin = 0x01;
constexpr std::uint8_t kTcpSyn = 0x02;
constexpr std::uint8_t kTcpRst = 0x04;
constexpr std::uint8_t kTcpAck = 0x10;
constexpr std::size_t kTcpMinHeader = 20;
constexpr std::size_t kIpv4MinHeader = 20;
constexpr std::size_t kIpv6Header = 40;

constexpr std::uint8_t kIpProtoHopByHop = 0;
constexpr std::uint8_t kIpProtoTcp = 6;
constexpr std::uint8_t kIpProtoRouting = 43;
constexpr std::uint8_t kIpProtoFragment = 44;
constexpr std::uint8_t kIpProtoAuth = 51;
constexpr std::uint8_t kIpProtoDestOpts = 60;

constexpr std::uint16_t kEtherTypeIpv4 = 0x0800;
constexpr std::uint16_t kEtherTypeIpv6 = 0x86dd;
constexpr std::uint16_t kEtherTypeVlan = 0x8100;     // IEEE 802.1Q
constexpr std::uint16_t kEtherTypeQinQ = 0x88a8;     // IEEE 802.1ad service tag
constexpr std::uint16_t kEtherTypeQinQOld = 0x9100;  // pre-802.1ad double tagging

// LINKTYPE_RAW as written in files; libpcap normally maps it to DLT_RAW, but
// accept the file value too in case a build does not.
constexpr int kLinktypeRaw = 101;

std::uint16_t load16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}
std::uint32_t load32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

struct Address {
  int family = 0;  // AF_INET or AF_INET6
  std::array<std::uint8_t, 16> bytes{};
  auto operator<=>(const Address&) const = default;
};

Address make_address(int family, const std::uint8_t* p) {
  Address a;
  a.family = family;
  std::copy_n(p, family == AF_INET ? 4 : 16, a.bytes.begin());
  return a;
}

struct Endpoint {
  Address addr;
  std::uint16_t port = 0;
  auto operator<=>(const Endpoint&) const = default;
};

std::string format_endpoint(const Endpoint& e) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (inet_ntop(e.addr.family, e.addr.bytes.data(), buf, sizeof buf) == nullptr) buf[0] = '\0';
  const std::string port = std::to_string(e.port);
  if (e.addr.family == AF_INET6) return "[" + std::string(buf) + "]:" + port;
  return std::string(buf) + ":" + port;
}

struct FragmentKey {
  Address src;
  Address dst;
  std::uint32_t id = 0;
  auto operator<=>(const FragmentKey&) const = default;
};

enum class PacketKind : std::uint8_t {
  kOther,          // not TCP over IP, or too damaged to tell which stream it is
  kTcp,            // a whole TCP segment
  kTcpTruncated,   // TCP header readable, payload cut short by the capture
  kFirstFragment,  // first IP fragment of a TCP segment: header readable, payload partial
  kLaterFragment,  // a non-first IP fragment: no TCP header at all
};

struct TcpSegment {
  Endpoint src;
  Endpoint dst;
  std::uint32_t seq = 0;
  std::uint32_t ack = 0;  // with kTcpAck in flags
  std::uint8_t flags = 0;
  codec::Bytes payload;
  std::size_t declared_payload = 0;  // what the IP header says the payload is
};

struct Packet {
  PacketKind kind = PacketKind::kOther;
  TcpSegment tcp;
  FragmentKey fragment;               // kFirstFragment and kLaterFragment
  std::uint32_t fragment_offset = 0;  // kLaterFragment, in bytes
  bool ipv6 = false;
};

// `seg` is what was captured of the IP payload, `declared` its length per
// the IP header; the two differ when the capture cut the packet short.
void parse_tcp(codec::Bytes seg, std::size_t declared, Packet& out) {
  if (seg.size() < kTcpMinHeader || declared < kTcpMinHeader) return;
  const std::size_t header = std::size_t{static_cast<std::uint8_t>(seg[12] >> 4)} * 4;
  if (header < kTcpMinHeader || header > declared) return;  // malformed data offset
  TcpSegment& t = out.tcp;
  t.src.port = load16(&seg[0]);
  t.dst.port = load16(&seg[2]);
  t.seq = load32(&seg[4]);
  t.ack = load32(&seg[8]);
  t.flags = seg[13];
  t.declared_payload = declared - header;
  if (seg.size() < header) {
    // Options cut off: the ports are known, the payload is not.
    t.payload = {};
    out.kind = PacketKind::kTcpTruncated;
    return;
  }
  t.payload = seg.subspan(header);
  out.kind = t.payload.size() < t.declared_payload ? PacketKind::kTcpTruncated : PacketKind::kTcp;
}

void parse_ipv4(codec::Bytes ip, Packet& out) {
  if (ip.size() < kIpv4MinHeader) return;
  const std::size_t header = std::size_t{static_cast<std::uint8_t>(ip[0] & 0x0f)} * 4;  // IHL
  if (header < kIpv4MinHeader || ip.size() < header) return;
  std::size_t total = load16(&ip[2]);
  // Captures taken on the sending host with segmentation offload show a
  // total length of 0; the captured length is then the only measure.
  if (total == 0) total = ip.size();
  if (total < header) return;
  if (ip[9] != kIpProtoTcp) return;
  out.tcp.src.addr = make_address(AF_INET, &ip[12]);
  out.tcp.dst.addr = make_address(AF_INET, &ip[16]);
  const std::uint16_t frag = load16(&ip[6]);
  const std::uint32_t offset = std::uint32_t{static_cast<std::uint16_t>(frag & 0x1fff)} * 8;
  const bool more_fragments = (frag & 0x2000) != 0;
  if (offset != 0 || more_fragments) {
    out.fragment = FragmentKey{out.tcp.src.addr, out.tcp.dst.addr, load16(&ip[4])};
  }
  if (offset != 0) {
    out.kind = PacketKind::kLaterFragment;
    out.fragment_offset = offset;
    return;
  }
  const std::size_t captured_end = std::min(total, ip.size());
  parse_tcp(ip.subspan(header, captured_end - header), total - header, out);
  if (more_fragments && out.kind != PacketKind::kOther) out.kind = PacketKind::kFirstFragment;
}

void parse_ipv6(codec::Bytes ip, Packet& out) {
  if (ip.size() < kIpv6Header) return;
  out.ipv6 = true;
  const std::size_t payload_length = load16(&ip[4]);
  // 0 is a jumbogram (RFC 2675) or segmentation offload: use what was captured.
  const std::size_t declared_end = payload_length == 0 ? ip.size() : kIpv6Header + payload_length;
  const std::size_t captured_end = std::min(declared_end, ip.size());
  const Address src = make_address(AF_INET6, &ip[8]);
  const Address dst = make_address(AF_INET6, &ip[24]);
  std::uint8_t next = ip[6];
  std::size_t off = kIpv6Header;
  bool first_fragment = false;
  // Each extension header is at least 8 octets, so this walk ends.
  for (;;) {
    switch (next) {
      case kIpProtoTcp:
        out.tcp.src.addr = src;
        out.tcp.dst.addr = dst;
        if (off > captured_end) return;
        parse_tcp(ip.subspan(off, captured_end - off), declared_end - off, out);
        if (first_fragment && out.kind != PacketKind::kOther) out.kind = PacketKind::kFirstFragment;
        return;
      case kIpProtoHopByHop:
      case kIpProtoRouting:
      case kIpProtoDestOpts:
        // RFC 8200 §4.3-4.6: length in 8-octet units, not counting the first 8.
        if (off + 2 > captured_end) return;
        next = ip[off];
        off += (std::size_t{ip[off + 1]} + 1) * 8;
        break;
      case kIpProtoAuth:
        // RFC 4302 §2.2: length in 4-octet units, minus 2.
        if (off + 2 > captured_end) return;
        next = ip[off];
        off += (std::size_t{ip[off + 1]} + 2) * 4;
        break;
      case kIpProtoFragment: {
        // RFC 8200 §4.5: fixed 8 octets.
        if (off + 8 > captured_end) return;
        const std::uint16_t word = load16(&ip[off + 2]);
        const std::uint32_t offset = word & 0xfff8u;
        const bool more = (word & 1) != 0;
        out.fragment = FragmentKey{src, dst, load32(&ip[off + 4])};
        next = ip[off];
        off += 8;
        if (offset != 0) {
          if (next != kIpProtoTcp) return;
          out.tcp.src.addr = src;
          out.tcp.dst.addr = dst;
          out.kind = PacketKind::kLaterFragment;
          out.fragment_offset = offset;
          return;
        }
        first_fragment = first_fragment || more;
        break;
      }
      default: return;  // not TCP (or ESP, which hides it)
    }
    if (off > declared_end) return;
  }
}

bool is_vlan_tag(std::uint16_t ethertype) {
  return ethertype == kEtherTypeVlan || ethertype == kEtherTypeQinQ ||
         ethertype == kEtherTypeQinQOld;
}

bool supported_linktype(int linktype) {
  return linktype == DLT_EN10MB || linktype == DLT_LINUX_SLL || linktype == DLT_LINUX_SLL2 ||
         linktype == DLT_RAW || linktype == kLinktypeRaw || linktype == DLT_IPV4 ||
         linktype == DLT_IPV6 || linktype == DLT_NULL || linktype == DLT_LOOP;
}

// Strips the link-layer header and parses what follows. Frames that are too
// short for their headers come back as kOther: peer input never asserts.
Packet parse_frame(int linktype, codec::Bytes frame) {
  Packet out;
  std::size_t off = 0;
  std::uint16_t ethertype = 0;
  bool has_ethertype = true;
  if (linktype == DLT_EN10MB) {
    if (frame.size() < 14) return out;
    ethertype = load16(&frame[12]);
    off = 14;
  } else if (linktype == DLT_LINUX_SLL) {
    if (frame.size() < 16) return out;
    ethertype = load16(&frame[14]);
    off = 16;
  } else if (linktype == DLT_LINUX_SLL2) {
    if (frame.size() < 20) return out;
    ethertype = load16(&frame[0]);
    off = 20;
  } else if (linktype == DLT_NULL || linktype == DLT_LOOP) {
    // A 4-octet address family, in the capturing host's byte order for
    // DLT_NULL; its value for IPv6 differs between BSDs, so the IP version
    // nibble is the more reliable guide.
    if (frame.size() < 4) return out;
    off = 4;
    has_ethertype = false;
  } else {
    has_ethertype = false;  // raw IP
  }
  if (has_ethertype) {
    while (is_vlan_tag(ethertype)) {
      if (frame.size() < off + 4) return out;
      ethertype = load16(&frame[off + 2]);
      off += 4;
    }
    if (ethertype != kEtherTypeIpv4 && ethertype != kEtherTypeIpv6) return out;
  }
  const codec::Bytes ip = frame.subspan(off);
  if (ip.empty()) return out;
  switch (ip[0] >> 4) {
    case 4: parse_ipv4(ip, out); break;
    case 6: parse_ipv6(ip, out); break;
    default: break;
  }
  return out;
}

constexpr std::size_t direction_index(PcapDirection d) {
  return d == PcapDirection::kClientToServer ? 0 : 1;
}

struct HeldSegment {
  std::uint64_t packet = 0;
  double time = 0;
  std::vector<std::uint8_t> bytes;
};

struct DirectionState {
  bool started = false;   // next_seq is known
  bool from_syn = false;  // ... because a SYN was seen
  bool fin = false;
  std::uint32_t fin_seq = 0;      // the FIN's sequence number (the first FIN seen)
  std::uint64_t fin_packet = 0;
  std::uint32_t isn = 0;
  std::uint32_t next_seq = 0;  // sequence number of the next octet to deliver
  // The same octet as an offset from where delivery started. Held segments
  // are keyed by it so that their order survives sequence number wrap.
  std::int64_t next_pos = 0;
  std::map<std::int64_t, HeldSegment> held;
  std::size_t held_bytes = 0;
  // The highest ACK the receiver sent for this direction, and in which packet.
  bool acked = false;
  std::uint32_t ack = 0;
  std::uint64_t ack_packet = 0;
  // The last hole skipped, as stream offsets [from, to): a segment of it
  // that turns up afterwards is reported, not silently dropped.
  std::int64_t skipped_from = 0, skipped_to = 0;

  bool has_payload() const { return next_pos != 0 || !held.empty(); }
};

struct Stream {
  PcapStreamInfo* info = nullptr;
  Endpoint client;
  Endpoint server;
  std::array<DirectionState, 2> dirs;
  bool reset = false;

  bool finished() const { return reset || (dirs[0].fin && dirs[1].fin); }
};

class Reassembler {
 public:
  Reassembler(std::uint16_t port, const std::function<void(const PcapChunk&)>& on_chunk,
              const std::function<void(const PcapNotice&)>& on_notice)
      : port_(port), on_chunk_(on_chunk), on_notice_(on_notice) {}

  void packet(std::uint64_t number, double time, const Packet& p);
  // End of capture: reports payload still held behind a hole.
  void finish();

  std::uint64_t tcp_packets() const { return tcp_packets_; }
  std::vector<PcapStreamInfo> streams() const { return {infos_.begin(), infos_.end()}; }
  std::vector<std::pair<std::uint16_t, std::uint64_t>> other_ports() const;

 private:
  Stream* find_or_create(const TcpSegment& t);
  Stream& create(const Endpoint& client, const Endpoint& server);
  void later_fragment(std::uint64_t number, const Packet& p);
  void accept(Stream& s, PcapDirection dir, std::uint32_t seq, codec::Bytes payload,
              std::uint64_t number, double time);
  void hold(Stream& s, PcapDirection dir, std::int64_t pos, codec::Bytes payload,
            std::uint64_t number, double time);
  void drain(Stream& s, PcapDirection dir);
  // Gives up on the hole before the first held segment: the capture never
  // had it (`why` says how that is known); delivery resumes after it.
  void skip_hole(Stream& s, PcapDirection dir, const std::string& why, std::uint64_t number);
  // The receiver acknowledged `ack` for this direction (in packet `number`).
  void acknowledged(Stream& s, PcapDirection dir, std::uint32_t ack, std::uint64_t number);
  // Skips the holes the receiver has acknowledged: it has those bytes, so no
  // retransmission will come; only the capture missed them.
  void skip_acknowledged(Stream& s, PcapDirection dir, std::uint64_t number);
  // At the end of the capture: the bytes after the last ones delivered that
  // the sender's FIN or the receiver's ACK says were sent (a gap no later
  // segment showed).
  void end_gap(Stream& s, PcapDirection dir);
  void deliver(Stream& s, PcapDirection dir, codec::Bytes bytes, std::uint64_t number, double time);
  void notice(const Stream& s, PcapDirection dir, std::string message, bool bytes_skipped = false,
              std::uint64_t number = 0, bool at_end = false);

  std::uint16_t port_;
  const std::function<void(const PcapChunk&)>& on_chunk_;
  const std::function<void(const PcapNotice&)>& on_notice_;
  // Deques: chunks and notices carry pointers to the infos, which must stay
  // put while later streams are added.
  std::deque<PcapStreamInfo> infos_;
  std::deque<Stream> streams_;
  std::map<std::pair<Endpoint, Endpoint>, Stream*> by_tuple_;  // (client, server) -> newest stream
  std::map<FragmentKey, std::pair<Stream*, PcapDirection>> fragments_;
  std::uint64_t tcp_packets_ = 0;
  double start_ = -1;  // the first packet's time
  // Packets per TCP port, of the TCP packets not on port_ (allocated at the first).
  std::vector<std::uint64_t> other_ports_;
};

Stream& Reassembler::create(const Endpoint& client, const Endpoint& server) {
  PcapStreamInfo& info = infos_.emplace_back();
  info.id = static_cast<int>(infos_.size());
  info.client = format_endpoint(client);
  info.server = format_endpoint(server);
  Stream& s = streams_.emplace_back();
  s.info = &info;
  s.client = client;
  s.server = server;
  by_tuple_[{client, server}] = &s;
  return s;
}

std::vector<std::pair<std::uint16_t, std::uint64_t>> Reassembler::other_ports() const {
  std::vector<std::pair<std::uint16_t, std::uint64_t>> all;
  for (std::size_t port = 0; port < other_ports_.size(); ++port) {
    if (other_ports_[port] != 0) all.emplace_back(static_cast<std::uint16_t>(port), other_ports_[port]);
  }
  const std::size_t n = std::min<std::size_t>(all.size(), 3);
  std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n), all.end(),
                    [](const auto& a, const auto& b) { return a.second > b.second || (a.second == b.second && a.first < b.first); });
  all.resize(n);
  return all;
}

Stream* Reassembler::find_or_create(const TcpSegment& t) {
  const bool to_server = t.dst.port == port_;
  const bool from_server = t.src.port == port_;
  if (!to_server && !from_server) return nullptr;
  Stream* found = nullptr;
  if (to_server) {
    if (auto it = by_tuple_.find({t.src, t.dst}); it != by_tuple_.end()) found = it->second;
  }
  if (found == nullptr && from_server) {
    if (auto it = by_tuple_.find({t.dst, t.src}); it != by_tuple_.end()) found = it->second;
  }
  const bool syn_only = (t.flags & (kTcpSyn | kTcpAck)) == kTcpSyn;
  if (found != nullptr) {
    // A SYN without ACK never occurs inside a connection, so one from the
    // client with a new ISN on a tuple that has carried data or ended is the
    // tuple being reused. A tuple that has seen only handshake packets keeps
    // its stream: the capture may hold the SYN-ACK before the SYN.
    const DirectionState& c2s = found->dirs[0];
    const bool same_syn = c2s.from_syn && c2s.isn == t.seq;
    const bool used = found->finished() || c2s.has_payload() || found->dirs[1].has_payload();
    if (syn_only && t.src == found->client && used && !same_syn) {
      return &create(found->client, found->server);
    }
    return found;
  }
  // Both ports may equal the one asked for; the handshake then says who the
  // client is, failing which the first sender is taken as the client.
  if (to_server && from_server) {
    if ((t.flags & (kTcpSyn | kTcpAck)) == (kTcpSyn | kTcpAck)) return &create(t.dst, t.src);
    return &create(t.src, t.dst);
  }
  return to_server ? &create(t.src, t.dst) : &create(t.dst, t.src);
}

void Reassembler::notice(const Stream& s, PcapDirection dir, std::string message, bool bytes_skipped,
                         std::uint64_t number, bool at_end) {
  on_notice_(PcapNotice{s.info, dir, std::move(message), bytes_skipped, number, at_end});
}

void Reassembler::deliver(Stream& s, PcapDirection dir, codec::Bytes bytes, std::uint64_t number,
                          double time) {
  DirectionState& d = s.dirs[direction_index(dir)];
  d.next_pos += static_cast<std::int64_t>(bytes.size());
  d.next_seq += static_cast<std::uint32_t>(bytes.size());
  on_chunk_(PcapChunk{s.info, dir, number, time, time - start_, bytes});
}

void Reassembler::drain(Stream& s, PcapDirection dir) {
  DirectionState& d = s.dirs[direction_index(dir)];
  while (!d.held.empty() && d.held.begin()->first <= d.next_pos) {
    const std::int64_t pos = d.held.begin()->first;
    const HeldSegment seg = std::move(d.held.begin()->second);
    d.held.erase(d.held.begin());
    d.held_bytes -= seg.bytes.size();
    const std::int64_t end = pos + static_cast<std::int64_t>(seg.bytes.size());
    if (end <= d.next_pos) continue;  // wholly covered by what was delivered since
    const auto skip = static_cast<std::size_t>(d.next_pos - pos);
    deliver(s, dir, codec::Bytes(seg.bytes).subspan(skip), seg.packet, seg.time);
  }
}

void Reassembler::hold(Stream& s, PcapDirection dir, std::int64_t pos, codec::Bytes payload,
                       std::uint64_t number, double time) {
  DirectionState& d = s.dirs[direction_index(dir)];
  auto [it, inserted] = d.held.try_emplace(pos);
  if (!inserted) {
    if (it->second.bytes.size() >= payload.size()) return;  // a retransmission of held data
    d.held_bytes -= it->second.bytes.size();
  }
  it->second.packet = number;
  it->second.time = time;
  it->second.bytes.assign(payload.begin(), payload.end());
  d.held_bytes += payload.size();
  while (d.held_bytes > kMaxHeldBytes) {
    // The segment that would fill the hole is presumed lost by the capture:
    // give up waiting, skip the hole, and deliver what follows it.
    skip_hole(s, dir,
              "with more than " + std::to_string(kMaxHeldBytes >> 20) +
                  " MiB held out of order after them at packet " + std::to_string(number),
              number);
  }
}

void Reassembler::skip_hole(Stream& s, PcapDirection dir, const std::string& why, std::uint64_t number) {
  DirectionState& d = s.dirs[direction_index(dir)];
  if (d.held.empty()) return;
  const std::int64_t first = d.held.begin()->first;
  const auto missing = static_cast<std::uint64_t>(first - d.next_pos);
  notice(s, dir,
         "gap: " + std::to_string(missing) + " bytes never captured (seq " + std::to_string(d.next_seq) +
             ", stream offset " + std::to_string(d.next_pos) + ") " + why + "; skipped",
         true, number);
  d.skipped_from = d.next_pos;
  d.skipped_to = first;
  d.next_seq += static_cast<std::uint32_t>(missing);
  d.next_pos = first;
  drain(s, dir);
}

void Reassembler::acknowledged(Stream& s, PcapDirection dir, std::uint32_t ack, std::uint64_t number) {
  DirectionState& d = s.dirs[direction_index(dir)];
  if (!d.started) return;
  // Serial number arithmetic: only a higher ACK says something new.
  if (!d.acked || static_cast<std::int32_t>(ack - d.ack) > 0) {
    d.acked = true;
    d.ack = ack;
    d.ack_packet = number;
  }
}

void Reassembler::skip_acknowledged(Stream& s, PcapDirection dir, std::uint64_t number) {
  DirectionState& d = s.dirs[direction_index(dir)];
  while (d.acked && !d.held.empty()) {
    const auto delta = static_cast<std::int32_t>(d.ack - d.next_seq);
    if (delta <= 0 || d.next_pos + delta < d.held.begin()->first) return;  // the hole may still come
    skip_hole(s, dir, "but acknowledged by the receiver at packet " + std::to_string(d.ack_packet), number);
  }
}

void Reassembler::accept(Stream& s, PcapDirection dir, std::uint32_t seq, codec::Bytes payload,
                         std::uint64_t number, double time) {
  DirectionState& d = s.dirs[direction_index(dir)];
  // Serial number arithmetic (RFC 1982): the signed 32-bit distance from the
  // next expected octet, correct across wrap for any sane window.
  const auto delta = static_cast<std::int32_t>(seq - d.next_seq);
  const std::int64_t pos = d.next_pos + delta;
  const std::int64_t end = pos + static_cast<std::int64_t>(payload.size());
  if (pos < d.skipped_to && end > d.skipped_from) {
    const std::int64_t late = std::min(end, d.skipped_to) - std::max(pos, d.skipped_from);
    notice(s, dir,
           "packet " + std::to_string(number) + ": " + std::to_string(late) +
               " bytes of the gap skipped at stream offset " + std::to_string(d.skipped_from) +
               " arrived late (the capture has them out of order); not decoded",
           false, number);
  }
  if (end <= d.next_pos) return;  // retransmission of delivered data
  if (pos > d.next_pos) {
    hold(s, dir, pos, payload, number, time);
    return;
  }
  const auto skip = static_cast<std::size_t>(d.next_pos - pos);  // retransmitted overlap
  deliver(s, dir, payload.subspan(skip), number, time);
  drain(s, dir);
}

void Reassembler::later_fragment(std::uint64_t number, const Packet& p) {
  // A non-first fragment has no TCP header; it can only be tied to a stream
  // through its first fragment (if that was seen and was on our port).
  auto it = fragments_.find(p.fragment);
  if (it == fragments_.end()) return;
  ++tcp_packets_;
  notice(*it->second.first, it->second.second,
         "packet " + std::to_string(number) + ": " + (p.ipv6 ? "IPv6" : "IPv4") +
             " fragment at offset " + std::to_string(p.fragment_offset) +
             " skipped (IP reassembly is not supported)");
}

void Reassembler::packet(std::uint64_t number, double time, const Packet& p) {
  if (start_ < 0) start_ = time;
  if (p.kind == PacketKind::kOther) return;
  if (p.kind == PacketKind::kLaterFragment) {
    later_fragment(number, p);
    return;
  }
  const TcpSegment& t = p.tcp;
  Stream* s = find_or_create(t);
  if (s == nullptr) {
    if (other_ports_.empty()) other_ports_.resize(65536);
    ++other_ports_[t.src.port];
    if (t.dst.port != t.src.port) ++other_ports_[t.dst.port];
    return;
  }
  ++tcp_packets_;
  const PcapDirection dir =
      t.src == s->client ? PcapDirection::kClientToServer : PcapDirection::kServerToClient;
  DirectionState& d = s->dirs[direction_index(dir)];

  if ((t.flags & kTcpSyn) != 0 && !d.started) {
    d.started = true;
    d.from_syn = true;
    d.isn = t.seq;
    d.next_seq = t.seq + 1;  // the SYN occupies one sequence number
    s->info->saw_syn = true;
  }
  const std::uint32_t data_seq = t.seq + ((t.flags & kTcpSyn) != 0 ? 1 : 0);
  if ((t.flags & kTcpAck) != 0) {
    acknowledged(*s, dir == PcapDirection::kClientToServer ? PcapDirection::kServerToClient
                                                           : PcapDirection::kClientToServer,
                 t.ack, number);
  }

  if (p.kind == PacketKind::kTcpTruncated) {
    notice(*s, dir,
           "packet " + std::to_string(number) + ": truncated by the capture (" +
               std::to_string(t.payload.size()) + " of " + std::to_string(t.declared_payload) +
               " payload bytes captured); skipped");
  } else if (p.kind == PacketKind::kFirstFragment) {
    if (fragments_.size() >= kMaxTrackedFragments) fragments_.clear();
    fragments_[p.fragment] = {s, dir};
    notice(*s, dir,
           "packet " + std::to_string(number) + ": " + (p.ipv6 ? "IPv6" : "IPv4") +
               " fragmented segment skipped (IP reassembly is not supported)");
  } else if (!t.payload.empty() && (t.flags & kTcpRst) == 0) {
    // RFC 1122 §4.2.2.12: data on a RST is diagnostic text, not stream data.
    if (!d.started) {
      // Joined midway: delivery starts at the first payload seen.
      d.started = true;
      d.next_seq = data_seq;
    }
    accept(*s, dir, data_seq, t.payload, number, time);
  }
  if ((t.flags & kTcpFin) != 0 && !d.fin) {
    d.fin = true;
    d.fin_seq = data_seq + static_cast<std::uint32_t>(std::max(t.payload.size(), t.declared_payload));
    d.fin_packet = number;
  }
  if ((t.flags & kTcpRst) != 0) s->reset = true;
  // The sender's packet after the receiver acknowledged a hole did not fill it.
  skip_acknowledged(*s, dir, number);
}

void Reassembler::finish() {
  // What is still held waits on a hole no packet filled: nothing more can
  // come, so each hole is skipped and what follows it delivered.
  for (Stream& s : streams_) {
    for (PcapDirection dir : {PcapDirection::kClientToServer, PcapDirection::kServerToClient}) {
      skip_acknowledged(s, dir, 0);
      while (!s.dirs[direction_index(dir)].held.empty()) skip_hole(s, dir, "by the end of the capture", 0);
      end_gap(s, dir);
    }
  }
}

void Reassembler::end_gap(Stream& s, PcapDirection dir) {
  // Bytes the sender sent after the last ones captured, with nothing
  // captured after them to show the hole: its FIN says where its bytes
  // ended, else the receiver's highest ACK (which counts a FIN the capture
  // missed as one octet more).
  DirectionState& d = s.dirs[direction_index(dir)];
  if (!d.started) return;
  std::int32_t missing = 0;
  std::string why;
  if (d.fin) {
    missing = static_cast<std::int32_t>(d.fin_seq - d.next_seq);
    why = "before the FIN at packet " + std::to_string(d.fin_packet);
  } else if (d.acked) {
    missing = static_cast<std::int32_t>(d.ack - d.next_seq);
    if (missing == 1) missing = 0;  // a FIN the capture missed, not an octet of data
    why = "acknowledged by the receiver at packet " + std::to_string(d.ack_packet);
  }
  if (missing <= 0) return;
  notice(s, dir,
         "gap: " + std::to_string(missing) + " bytes never captured at the end of the direction (seq " +
             std::to_string(d.next_seq) + ", stream offset " + std::to_string(d.next_pos) + "), " + why,
         true, 0, true);
  d.next_seq += static_cast<std::uint32_t>(missing);
  d.next_pos += missing;
}

struct PcapCloser {
  void operator()(pcap_t* p) const { pcap_close(p); }
};

// libpcap's open errors often start with the file name; the caller's message
// already names it.
std::string open_reason(const std::string& path, const char* errbuf) {
  std::string reason(errbuf);
  const std::string prefix = path + ": ";
  if (reason.starts_with(prefix)) reason.erase(0, prefix.size());
  return reason;
}

}  // namespace

Result<PcapSummary> read_pcap_streams(const std::string& path, std::uint16_t port,
                                      const std::function<void(const PcapChunk&)>& on_chunk,
                                      const std::function<void(const PcapNotice&)>& on_notice) {
  char errbuf[PCAP_ERRBUF_SIZE] = {};
  // Nanosecond precision: libpcap scales microsecond files up, so neither
  // kind loses resolution.
  std::unique_ptr<pcap_t, PcapCloser> pcap(
      pcap_open_offline_with_tstamp_precision(path.c_str(), PCAP_TSTAMP_PRECISION_NANO, errbuf));
  if (!pcap) {
    return unexpected(Error{"pcap-open", "cannot open " + path + ": " + open_reason(path, errbuf)});
  }
  const int linktype = pcap_datalink(pcap.get());
  if (!supported_linktype(linktype)) {
    const char* name = pcap_datalink_val_to_name(linktype);
    return unexpected(Error{"pcap-linktype", path + ": unsupported link type " +
                                                 (name != nullptr ? name : "unknown") + " (" +
                                                 std::to_string(linktype) + ")"});
  }

  Reassembler reassembler(port, on_chunk, on_notice);
  PcapSummary summary;
  for (;;) {
    pcap_pkthdr* header = nullptr;
    const u_char* data = nullptr;
    const int rc = pcap_next_ex(pcap.get(), &header, &data);
    if (rc == PCAP_ERROR_BREAK) break;  // end of file
    if (rc != 1) {
      // A damaged or cut-off file: what was read so far has been delivered;
      // the held data goes too (finish()), and the summary says where it ended.
      std::string why = pcap_geterr(pcap.get());
      if (why.find("different from the type of the first interface") != std::string::npos) {
        // libpcap's own limit, not damage: say so, and how to get around it.
        why += " (libpcap reads a pcapng only while all its interfaces have one link type: split the capture "
               "per interface first, e.g. tshark -r FILE -Y 'frame.interface_id == 1' -w part1.pcapng)";
      }
      summary.read_error = path + ": cannot read packet " + std::to_string(summary.packets + 1) + ": " + why;
      break;
    }
    ++summary.packets;
    const double time =
        static_cast<double>(header->ts.tv_sec) + static_cast<double>(header->ts.tv_usec) * 1e-9;
    reassembler.packet(summary.packets, time,
                       parse_frame(linktype, codec::Bytes(data, header->caplen)));
  }
  reassembler.finish();
  summary.tcp_packets = reassembler.tcp_packets();
  summary.streams = reassembler.streams();
  summary.other_ports = reassembler.other_ports();
  return summary;
}

}  // namespace isoproxy
