// Reads a capture (pcap or pcapng, through libpcap) and reassembles both
// directions of every TCP stream on a port into ordered byte runs, so that the
// TPKT framer can be run over them as if they had been read from a socket.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "codec/tpkt.h"
#include "result.h"

namespace isoproxy {

struct PcapStreamInfo {
  int id = 0;                 // 1, 2, ... in order of first appearance
  std::string client;         // "10.0.0.1:49152" or "[fe80::1]:49152"
  std::string server;         // the side whose port is the one asked for
  bool saw_syn = false;       // false: the capture joined the stream midway
};

enum class PcapDirection : std::uint8_t { kClientToServer, kServerToClient };

struct PcapChunk {
  const PcapStreamInfo* stream;
  PcapDirection direction;
  std::uint64_t packet;       // 1-based packet number in the file
  double time;                // seconds since the epoch
  double since_start;         // seconds since the file's first packet (tshark's frame.time_relative)
  codec::Bytes bytes;         // in-order payload, retransmitted overlap removed
};

// Something wrong with one stream that the caller should report (a gap of
// missing segments, payload left out of order at the end of the file).
struct PcapNotice {
  const PcapStreamInfo* stream;
  PcapDirection direction;
  std::string message;
  // Bytes of this direction were skipped: what follows does not continue
  // what came before, so a framer over it has lost its place.
  bool bytes_skipped = false;
  std::uint64_t packet = 0;  // the packet being read when it arose; 0: at the end of the file
  bool at_end = false;       // the skipped bytes end the direction: nothing captured follows
};

struct PcapSummary {
  std::uint64_t packets = 0;       // packets in the file
  std::uint64_t tcp_packets = 0;   // TCP packets on the port
  std::vector<PcapStreamInfo> streams;
  // TCP packets not on the port: the ports they used most, busiest first
  // (at most 3, with their packet counts), to suggest another --port.
  std::vector<std::pair<std::uint16_t, std::uint64_t>> other_ports;
  // The file ends inside a record or is damaged at one (tcpdump killed while
  // writing): everything before it was read; this says where and why.
  std::string read_error;
};

// Calls on_chunk for every in-order run of payload and on_notice for every
// problem, in capture order. Fails (with the file name in the message) if the
// file cannot be opened or its link type is not supported.
//
// Details callers rely on:
// - `stream` pointers in chunks and notices stay valid (and keep their
//   address) until read_pcap_streams returns, not after; the summary holds
//   copies.
// - One chunk per captured segment. A segment held out of order is delivered
//   once the hole before it fills, with its own packet number and time, so
//   packet numbers within a direction need not increase.
// - Holes: segments after a hole are held until it fills. It is presumed
//   never captured, with a "gap: ..." notice (bytes_skipped: a framer fed
//   these chunks has lost its place) and delivery resuming after it, once
//   the receiver's ACK covered it (the receiver has those bytes, so no
//   retransmission will come) and the sender's next packet did not fill it
//   (a capture may still hold the segment just after the ACK), when more
//   than 16 MiB is held behind it, or at the end of the file. A segment of a
//   skipped hole that turns up later gets a notice; it is not delivered.
// - Packets cut short by the capture's snap length, and IP fragments, are
//   skipped with a notice when they can be tied to a stream; other malformed
//   packets are skipped silently. Checksums are not verified (offloading
//   makes them wrong in captures taken on the sender).
// - Error kinds: "pcap-open", "pcap-linktype", and "pcap-read" for a file
//   damaged or cut off partway (chunks and notices up to there have been
//   given). As with libpcap, the path "-" reads standard input.
Result<PcapSummary> read_pcap_streams(const std::string& path, std::uint16_t port,
                                      const std::function<void(const PcapChunk&)>& on_chunk,
                                      const std::function<void(const PcapNotice&)>& on_notice);

}  // namespace isoproxy
