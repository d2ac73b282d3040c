// `isoproxy decode`: turns RFC 1006 frames from hex (arguments or standard
// input), event-log addresses, or a capture file into named fields and the
// anomalies found, as text or JSON.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace isoproxy {

struct DecodeCmdOptions {
  std::vector<std::string> hex;        // joined into one stream of TPKTs
  bool from_stdin = false;             // read the hex from `in`
  bool json = false;
  bool cotp = false;                   // each argument / line is a bare TPDU, no TPKT header
  bool strict = false;                 // reject TPDU-NR != 0 (RFC 2126 §6.5)
  std::size_t max_length = 65535;      // largest TPKT accepted
  std::vector<std::string> addresses;  // --address HEX
  std::string pcap;                    // --pcap FILE
  std::uint16_t port = 102;
};

// Exit status: 0 all decoded (anomalies are warnings), 1 a frame or stream
// was rejected or input ended mid-frame, 2 the input could not be read at all.
// Results go to `out`; one-line errors to `err`.
int run_decode(const DecodeCmdOptions& opts, std::istream& in, std::ostream& out, std::ostream& err);

}  // namespace isoproxy
