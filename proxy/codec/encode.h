// Re-encoding and editing TPDUs. Two kinds of edit (DESIGN.md §2.1):
//  - in place, same length: the reserved byte, a parameter value of equal size;
//  - length-changing: decode into an OwnedTpdu, edit, encode; LI and the TPKT
//    length are recomputed. Re-encoding an unedited decode is byte-exact.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "codec/x224.h"
#include "result.h"

namespace isoproxy::codec {

using MutableBytes = std::span<std::uint8_t>;

// Sets byte 1 of a TPKT. The caller passes a whole frame (>= 4 bytes).
inline void set_reserved(MutableBytes tpkt, std::uint8_t value) { tpkt[1] = value; }

// Overwrites the value of a parameter of `tpdu` (decoded from `tpkt_bytes`,
// which must be the same bytes, writable) with `value` of the same length.
// Returns false, changing nothing, if the lengths differ.
bool replace_param_value_in_place(MutableBytes tpkt_bytes, const Param& p, Bytes value);

struct OwnedParam {
  std::uint8_t code = 0;
  std::vector<std::uint8_t> value;
};

// An editable copy of a TPDU: everything needed to write it back exactly.
struct OwnedTpdu {
  std::uint8_t code = 0;
  std::vector<std::uint8_t> fixed;  // fixed part after the code octet
  std::vector<OwnedParam> params;   // in wire order, unknown and duplicate ones included
  std::vector<std::uint8_t> data;   // user data, or trailing octets for types without

  static OwnedTpdu from(const Tpdu& t);

  // Replaces the value of the first parameter with `code`, or appends one.
  void set_param(std::uint8_t code, Bytes value);
  // Removes every parameter with `code`; returns how many.
  std::size_t remove_param(std::uint8_t code);
  OwnedParam* find(std::uint8_t code);

  // The TPDU, LI recomputed; fails if the header would exceed LI 254.
  Result<std::vector<std::uint8_t>> encode() const;
};

// A whole TPKT around `t`, length recomputed; fails over `max_length`.
Result<std::vector<std::uint8_t>> encode_frame(std::uint8_t reserved, const OwnedTpdu& t,
                                               std::size_t max_length = kTpktMaxLength);

}  // namespace isoproxy::codec
