// Writes TCP payload to a pcap file with synthetic IPv4/IPv6 and TCP headers
// carrying the real addresses and ports, so that tshark and Wireshark
// reassemble and dissect it (as TPKT/COTP on port 102). Used by the tests and
// by the trace filter.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "codec/tpkt.h"
#include "result.h"

namespace isoproxy {

struct PcapFlow {
  std::string client_ip;  // "127.0.0.1" or "::1"; both sides of one family
  std::uint16_t client_port = 0;
  std::string server_ip;
  std::uint16_t server_port = 102;
  // Chooses the flow's ISNs: flows with different ordinals get different
  // ones. 0: the flow's index in this file. A writer of rotated files gives
  // each part of a session a new ordinal, so that the parts, merged, read as
  // TCP streams of their own instead of as retransmissions of each other.
  std::uint32_t ordinal = 0;
};

class PcapWriter {
 public:
  // Creates (truncates) `path`; link type raw IP. Error kind "pcap-open";
  // later I/O failures are "pcap-write" (buffered ones show at flush()).
  static Result<std::unique_ptr<PcapWriter>> open(const std::string& path);
  ~PcapWriter();
  PcapWriter(const PcapWriter&) = delete;
  PcapWriter& operator=(const PcapWriter&) = delete;

  // Adds a flow: writes its three-way handshake; returns a flow handle.
  // Error kind "pcap-address" if an address does not parse or the two are of
  // different families. ISNs are deterministic per flow ordinal.
  Result<int> add_flow(const PcapFlow& flow, double time);
  // One TCP segment of payload (split into segments of at most 65000 octets),
  // sequence numbers continuing per direction. An empty payload writes
  // nothing. Error kind "pcap-flow" for an unknown or closed flow.
  Status<> write(int flow, bool from_client, codec::Bytes payload, double time);
  // FIN both ways (client FIN, server FIN+ACK, client ACK); the flow is then
  // closed.
  Status<> close_flow(int flow, double time);
  // Bytes written so far, file header included: the file's size after flush().
  std::uint64_t bytes_written() const;
  Status<> flush();

 private:
  struct Impl;
  explicit PcapWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace isoproxy
