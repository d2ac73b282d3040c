// Text forms of wire values: hex in and out, TSAPs (ASCII when printable,
// hex always), and the hex network addresses MTA event logs print.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "codec/tpkt.h"
#include "result.h"

namespace isoproxy::codec {

// "0A1B" (upper case, no separators).
std::string to_hex(Bytes b);
// Parses hex, ignoring whitespace, ':' and a leading "0x" per token. Errors
// name the first bad character and its position, or an odd digit count.
Result<std::vector<std::uint8_t>> parse_hex(std::string_view text);

// Every byte in 0x20..0x7E (Wireshark's g_ascii_isprint).
bool is_printable(Bytes b);

// A TSAP: `ascii` set only when printable; `hex` always.
struct TsapText {
  std::string hex;
  std::string ascii;
  bool printable = false;
  // The display form, as a filter's configuration writes it, so that what a
  // log line shows can be pasted back: "SWISSLIFETSAP" or "hex:0102" (an
  // ASCII TSAP "0102" and the octets 01 02 must not look alike).
  // An ASCII TSAP that itself begins "hex:" is shown in hex too, as a rule
  // must write it (a rule reads "hex:..." as hex).
  std::string display() const {
    return (printable && ascii.rfind("hex:", 0) != 0) || hex.empty() ? ascii : "hex:" + hex;
  }
  // display() in double quotes, with '"' and '\\' escaped, for log lines: a
  // TSAP is the peer's text and must not be able to fake the fields after it.
  std::string quoted() const;
};
TsapText tsap_text(Bytes b);

// An address as an MTA event log prints it in hex: 4 octets -> IPv4 dotted,
// 16 -> IPv6, printable -> quoted ASCII, else hex. Also lists the other
// readings that fit ("MTA1" is printable and also 4 octets).
struct AddressText {
  std::string primary;
  std::vector<std::string> alternatives;
};
AddressText address_text(Bytes b);

}  // namespace isoproxy::codec
