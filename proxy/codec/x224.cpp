#include "codec/x224.h"

#include <array>
#include <cstdio>

namespace isoproxy::codec {

namespace {

// "0x%02X" without printf: every anomaly of every frame names its octet so.
std::string hex2(std::uint32_t v) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  char digits[8];
  int n = 0;
  do {
    digits[n++] = kHex[v & 0xF];
    v >>= 4;
  } while (v != 0);
  if (n < 2) digits[n++] = '0';
  std::string out = "0x";
  while (n > 0) out += digits[--n];
  return out;
}

bool known_type_nibble(std::uint8_t n) {
  switch (n) {
    case 0x1: case 0x2: case 0x5: case 0x6: case 0x7:
    case 0x8: case 0xC: case 0xD: case 0xE: case 0xF:
      return true;
    default:
      return false;
  }
}

bool carries_user_data(TpduType t) {
  return t == TpduType::kCR || t == TpduType::kCC || t == TpduType::kDR || t == TpduType::kDT ||
         t == TpduType::kED;
}

// Types whose low nibble is part of the code (must be 0) rather than a credit.
bool low_nibble_is_code(TpduType t) {
  return t != TpduType::kCR && t != TpduType::kCC && t != TpduType::kAK && t != TpduType::kRJ;
}

std::uint16_t be16(Bytes b, std::size_t at) {
  return static_cast<std::uint16_t>((b[at] << 8) | b[at + 1]);
}
std::uint32_t be32(Bytes b, std::size_t at) {
  return (static_cast<std::uint32_t>(b[at]) << 24) | (static_cast<std::uint32_t>(b[at + 1]) << 16) |
         (static_cast<std::uint32_t>(b[at + 2]) << 8) | b[at + 3];
}

// Fixed part (code octet onwards, LI excluded) for a type and format.
std::size_t fixed_len(TpduType t, TpduFormat f) {
  switch (t) {
    case TpduType::kCR: case TpduType::kCC: case TpduType::kDR: return 6;
    case TpduType::kDC: return 5;
    case TpduType::kER: return 4;
    case TpduType::kDT: case TpduType::kED: case TpduType::kEA:
      return f == TpduFormat::kClass0 ? 2 : f == TpduFormat::kNormal ? 4 : 7;
    case TpduType::kAK: case TpduType::kRJ:
      return f == TpduFormat::kExtended ? 9 : 4;
  }
  return 0;
}

// X.224 13.x: which LI values each variable-format type may have, and the
// format they imply (Wireshark infers the format the same way).
Result<TpduFormat, DecodeError> infer_format(TpduType t, std::uint8_t li) {
  switch (t) {
    case TpduType::kDT:
    case TpduType::kED:
      if (li == 2) return TpduFormat::kClass0;  // class 0/1; RFC 1006 ED form
      if (li == 4 || li == 8) return TpduFormat::kNormal;
      if (li == 7 || li == 11) return TpduFormat::kExtended;
      return unexpected(DecodeError{DecodeErrorKind::kLiInvalid, 0,
                                    std::string(tpdu_type_name(t)) + " with LI " + std::to_string(li) +
                                        " (class 0 requires 2; classes 2-4 use 4, 7, 8 or 11)"});
    case TpduType::kEA:
      if (li == 7 || li == 11) return TpduFormat::kExtended;
      return TpduFormat::kNormal;
    case TpduType::kAK:
      if (li >= 9 && (li % 2) == 1) return TpduFormat::kExtended;  // even LI: normal format
      return TpduFormat::kNormal;
    case TpduType::kRJ:
      if (li == 9 || li == 13) return TpduFormat::kExtended;
      return TpduFormat::kNormal;
    default:
      return TpduFormat::kClass0;
  }
}

bool param_known(TpduType t, std::uint8_t code) { return !param_name(t, code).empty(); }

void add(std::vector<Anomaly>* out, AnomalyKind k, std::string detail) {
  if (out) out->push_back({k, std::move(detail)});
}

void check_cr_cc(const Tpdu& p, std::vector<Anomaly>* out) {
  const std::uint8_t cls = *p.class_option >> 4;
  if (cls > 4) {
    add(out, AnomalyKind::kClassUndefined, "class " + std::to_string(cls) + " is not a transport class (0-4)");
  } else if (cls != 0) {
    add(out, AnomalyKind::kClassNotZero, "class " + std::to_string(cls) + " (RFC 1006 carries class 0)");
  }
  // protocol.md 2.4: bits 4-3 are 0, and the two options (extended
  // formats, no explicit flow control) belong to classes 2-4.
  if (cls <= 1 && (*p.class_option & 0x0F) != 0) {
    add(out, AnomalyKind::kClassOptions, "class " + std::to_string(cls) + " with option bits " + hex2(*p.class_option & 0x0F) +
                                             " (class 0 always uses 0x00)");
  }
  if (cls <= 1 && p.cdt != 0) {
    add(out, AnomalyKind::kCdtNonZero, "credit " + std::to_string(p.cdt) + " in class " + std::to_string(cls) +
                                           " (must be 0; some stacks compare the whole code octet)");
  }
  if (p.type == TpduType::kCR && p.dst_ref.value_or(0) != 0) {
    add(out, AnomalyKind::kDstRefInCr, "DST-REF " + hex2(*p.dst_ref) + " in a CR (must be 0)");
  }
  if (p.type == TpduType::kCR && p.bytes.size() > 128) {
    add(out, AnomalyKind::kCrTooLong, "CR of " + std::to_string(p.bytes.size()) + " octets (RFC 905 §13.3: at most 128)");
  }
  if (cls == 0 && !p.user_data.empty()) {
    add(out, AnomalyKind::kUserDataInClass0,
        std::to_string(p.user_data.size()) + " octets of user data in a class 0 " +
            std::string(tpdu_type_name(p.type)) + " (X.224 13.3.4 forbids; RFC 1006 §5 allows)");
  }
  for (const Param& prm : p.params) {
    const std::size_t n = prm.value.size();
    switch (prm.code) {
      case param::kTpduSize: {
        if (n != 1) {
          add(out, AnomalyKind::kParamBadLength, "TPDU size parameter of length " + std::to_string(n) + " (must be 1)");
          break;
        }
        const std::uint8_t c = prm.value[0];
        const auto octets = tpdu_size_octets(c);
        if (!octets) {
          add(out, AnomalyKind::kTpduSizeNonStandard, "TPDU size code " + hex2(c) + " is undefined (0x07-0x10)");
        } else if (c >= 0x0E) {
          add(out, AnomalyKind::kTpduSizeNonStandard,
              "TPDU size code " + hex2(c) + " (" + std::to_string(*octets) + ") is not X.224 (Tandem RFC 1006 only)");
        }
        if (octets && cls == 0 && *octets > 2048) {
          add(out, AnomalyKind::kTpduSizeOverClass0,
              "TPDU size " + std::to_string(*octets) + " in class 0 (ISO 8073 13.3.4: at most 2048)");
        }
        break;
      }
      case param::kCallingTsap:
      case param::kCalledTsap:
        if (n == 0 || n > 32) {
          add(out, AnomalyKind::kTsapLength,
              std::string(prm.code == param::kCallingTsap ? "calling" : "called") + " TSAP of length " +
                  std::to_string(n) + " (Wireshark shows 1-32)");
        }
        break;
      case param::kAdditionalOptions:
        if (n != 1) {
          add(out, AnomalyKind::kParamBadLength, "additional option selection of length " + std::to_string(n) + " (must be 1)");
        } else if (prm.value[0] & 0x08) {
          add(out, AnomalyKind::kReverseConnection,
              "additional option bit 4 set: RFC 2126 class 2 reverse connection (a relay cannot carry it)");
        }
        break;
      case param::kVersion:
        if (n != 1) add(out, AnomalyKind::kParamBadLength, "version parameter of length " + std::to_string(n) + " (must be 1)");
        break;
      case param::kChecksum:
        if (n != 2) add(out, AnomalyKind::kParamBadLength, "checksum parameter of length " + std::to_string(n) + " (must be 2)");
        break;
      case param::kPreferredMaxTpduSize:
        if (n < 1 || n > 4) {
          add(out, AnomalyKind::kParamBadLength, "preferred maximum TPDU size of length " + std::to_string(n) + " (must be 1-4)");
        }
        break;
      default:
        break;
    }
  }
}

}  // namespace

std::string_view tpdu_type_name(TpduType t) {
  switch (t) {
    case TpduType::kCR: return "CR";
    case TpduType::kCC: return "CC";
    case TpduType::kDR: return "DR";
    case TpduType::kDC: return "DC";
    case TpduType::kDT: return "DT";
    case TpduType::kED: return "ED";
    case TpduType::kAK: return "AK";
    case TpduType::kEA: return "EA";
    case TpduType::kRJ: return "RJ";
    case TpduType::kER: return "ER";
  }
  return "?";
}

std::string_view tpdu_type_long_name(TpduType t) {
  switch (t) {
    case TpduType::kCR: return "Connection Request";
    case TpduType::kCC: return "Connection Confirm";
    case TpduType::kDR: return "Disconnect Request";
    case TpduType::kDC: return "Disconnect Confirm";
    case TpduType::kDT: return "Data";
    case TpduType::kED: return "Expedited Data";
    case TpduType::kAK: return "Data Acknowledgement";
    case TpduType::kEA: return "Expedited Data Acknowledgement";
    case TpduType::kRJ: return "Reject";
    case TpduType::kER: return "TPDU Error";
  }
  return "?";
}

std::string_view tpdu_format_name(TpduFormat f) {
  switch (f) {
    case TpduFormat::kClass0: return "class 0";
    case TpduFormat::kNormal: return "normal";
    case TpduFormat::kExtended: return "extended";
  }
  return "?";
}

std::string_view param_name(TpduType t, std::uint8_t code) {
  if (code == param::kChecksum) return "checksum";
  switch (t) {
    case TpduType::kCR:
    case TpduType::kCC:
      switch (code) {
        case 0xC0: return "tpdu-size";
        case 0xC1: return "calling-tsap";
        case 0xC2: return "called-tsap";
        case 0xC4: return "version";
        case 0xC5: return "protection";
        case 0xC6: return "additional-options";
        case 0xC7: return "alternative-classes";
        case 0xF0: return "preferred-max-tpdu-size";
        case 0xF2: return "inactivity-timer";
        case 0x85: return "acknowledgement-time";
        case 0x86: return "residual-error-rate";
        case 0x87: return "priority";
        case 0x88: return "transit-delay";
        case 0x89: return "throughput";
        case 0x8B: return "reassignment-time";
        default: return {};
      }
    case TpduType::kDR:
      return code == 0xE0 ? "additional-clearing-info" : std::string_view{};
    case TpduType::kER:
      return code == 0xC1 ? "invalid-tpdu" : std::string_view{};
    case TpduType::kAK:
      switch (code) {
        case 0x8A: return "subsequence-number";
        case 0x8C: return "flow-control-confirmation";
        case 0x8F: return "selective-acknowledgement";
        default: return {};
      }
    default:
      return {};
  }
}

std::optional<std::string_view> dr_reason_name(std::uint8_t r) {
  switch (r) {
    case 0x00: return "reason not specified";
    case 0x01: return "congestion at TSAP";
    case 0x02: return "session entity not attached to TSAP";
    case 0x03: return "address unknown";
    case 0x80: return "normal disconnect initiated by session entity";
    case 0x81: return "remote transport entity congestion at connect request time";
    case 0x82: return "connection negotiation failed";
    case 0x83: return "duplicate source reference detected for the same pair of NSAPs";
    case 0x84: return "mismatched references";
    case 0x85: return "protocol error";
    case 0x87: return "reference overflow";
    case 0x88: return "connection request refused on this network connection";
    case 0x8A: return "header or parameter length invalid";
    default: return std::nullopt;
  }
}

std::optional<std::string_view> er_cause_name(std::uint8_t c) {
  switch (c) {
    case 0: return "reason not specified";
    case 1: return "invalid parameter code";
    case 2: return "invalid TPDU type";
    case 3: return "invalid parameter value";
    default: return std::nullopt;
  }
}

std::optional<std::uint32_t> tpdu_size_octets(std::uint8_t code) {
  if (code >= 0x07 && code <= 0x0F) return 1u << code;
  if (code == 0x10) return 65531;  // RFC 1006 default, Tandem's code
  return std::nullopt;
}

std::string_view anomaly_name(AnomalyKind k) {
  switch (k) {
    case AnomalyKind::kReservedNonZero: return "reserved-nonzero";
    case AnomalyKind::kClassNotZero: return "class-not-zero";
    case AnomalyKind::kClassUndefined: return "class-undefined";
    case AnomalyKind::kTpduSizeOverClass0: return "tpdu-size-over-class0";
    case AnomalyKind::kTpduSizeNonStandard: return "tpdu-size-nonstandard";
    case AnomalyKind::kTpduNrNonZero: return "tpdu-nr-nonzero";
    case AnomalyKind::kEmptyNonEotDt: return "empty-non-eot-dt";
    case AnomalyKind::kDrReasonNotClass0: return "dr-reason-not-class0";
    case AnomalyKind::kDrReasonUnknown: return "dr-reason-unknown";
    case AnomalyKind::kErCauseUnknown: return "er-cause-unknown";
    case AnomalyKind::kCdtNonZero: return "cdt-nonzero";
    case AnomalyKind::kCodeLowNibble: return "code-low-nibble";
    case AnomalyKind::kParamUnknown: return "param-unknown";
    case AnomalyKind::kParamDuplicate: return "param-duplicate";
    case AnomalyKind::kParamBadLength: return "param-bad-length";
    case AnomalyKind::kTsapLength: return "tsap-length";
    case AnomalyKind::kDstRefInCr: return "dst-ref-in-cr";
    case AnomalyKind::kUserDataInClass0: return "user-data-in-class0";
    case AnomalyKind::kCrTooLong: return "cr-too-long";
    case AnomalyKind::kTrailingBytes: return "trailing-bytes";
    case AnomalyKind::kReverseConnection: return "reverse-connection";
    case AnomalyKind::kDrDataTooLong: return "dr-data-too-long";
    case AnomalyKind::kExtendedFormat: return "extended-format";
    case AnomalyKind::kClassOptions: return "class-options";
    case AnomalyKind::kEdDataLength: return "ed-data-length";
  }
  return "unknown";
}

std::string_view decode_error_name(DecodeErrorKind k) {
  switch (k) {
    case DecodeErrorKind::kEmpty: return "empty";
    case DecodeErrorKind::kLiZero: return "li-zero";
    case DecodeErrorKind::kLiReserved: return "li-reserved";
    case DecodeErrorKind::kLiOverrun: return "li-overrun";
    case DecodeErrorKind::kLiTooShort: return "li-too-short";
    case DecodeErrorKind::kLiInvalid: return "li-invalid";
    case DecodeErrorKind::kUnknownType: return "unknown-type";
    case DecodeErrorKind::kParamOverrun: return "param-overrun";
    case DecodeErrorKind::kTpduNrNonZero: return "tpdu-nr-nonzero";
    case DecodeErrorKind::kFramer: return "framer";
  }
  return "unknown";
}

std::size_t Tpdu::fixed_length() const { return fixed_len(type, format); }

const Param* Tpdu::find(std::uint8_t c) const {
  for (const Param& p : params) {
    if (p.code == c) return &p;
  }
  return nullptr;
}

std::optional<Bytes> Tpdu::calling_tsap() const {
  if (type != TpduType::kCR && type != TpduType::kCC) return std::nullopt;
  const Param* p = find(param::kCallingTsap);
  if (!p) return std::nullopt;
  return p->value;
}

std::optional<Bytes> Tpdu::called_tsap() const {
  if (type != TpduType::kCR && type != TpduType::kCC) return std::nullopt;
  const Param* p = find(param::kCalledTsap);
  if (!p) return std::nullopt;
  return p->value;
}

std::optional<std::uint8_t> Tpdu::tpdu_size_code() const {
  if (type != TpduType::kCR && type != TpduType::kCC) return std::nullopt;
  const Param* p = find(param::kTpduSize);
  if (!p || p->value.size() != 1) return std::nullopt;
  return p->value[0];
}

Result<Tpdu, DecodeError> decode_tpdu(Bytes b, const DecodeOptions& opts, std::vector<Anomaly>* out) {
  using K = DecodeErrorKind;
  if (b.empty()) return unexpected(DecodeError{K::kEmpty, 0, "no TPDU octets"});
  const std::uint8_t li = b[0];
  // X.224 13.2.1: LI counts the header after the LI octet; 255 is reserved.
  if (li == 0) return unexpected(DecodeError{K::kLiZero, 0, "length indicator is zero"});
  if (li == 255) return unexpected(DecodeError{K::kLiReserved, 0, "length indicator 255 is reserved"});
  if (static_cast<std::size_t>(li) + 1 > b.size()) {
    return unexpected(DecodeError{K::kLiOverrun, 0,
                                  "LI " + std::to_string(li) + " runs past the TPDU (" +
                                      std::to_string(b.size() - 1) + " octets after LI)"});
  }
  const std::uint8_t code = b[1];
  const std::uint8_t nibble = code >> 4;
  if (!known_type_nibble(nibble)) {
    return unexpected(DecodeError{K::kUnknownType, 1,
                                  "unknown TPDU type " + hex2(code) + (nibble == 0x4 ? " (UD is connectionless)" : "")});
  }
  Tpdu p;
  p.bytes = b;
  p.li = li;
  p.code = code;
  p.type = static_cast<TpduType>(nibble);
  auto fmt = infer_format(p.type, li);
  if (!fmt) return unexpected(fmt.error());
  p.format = *fmt;
  const std::size_t fixed = fixed_len(p.type, p.format);
  if (li < fixed) {
    return unexpected(DecodeError{K::kLiTooShort, 0,
                                  std::string(tpdu_type_name(p.type)) + " with LI " + std::to_string(li) +
                                      " (its fixed part needs " + std::to_string(fixed) + ")"});
  }

  // Fixed part. Offsets from the LI octet; b[1] is the code.
  switch (p.type) {
    case TpduType::kCR:
    case TpduType::kCC:
      p.cdt = code & 0x0F;
      p.dst_ref = be16(b, 2);
      p.src_ref = be16(b, 4);
      p.class_option = b[6];
      break;
    case TpduType::kDR:
      p.dst_ref = be16(b, 2);
      p.src_ref = be16(b, 4);
      p.reason = b[6];
      break;
    case TpduType::kDC:
      p.dst_ref = be16(b, 2);
      p.src_ref = be16(b, 4);
      break;
    case TpduType::kER:
      p.dst_ref = be16(b, 2);
      p.cause = b[4];
      break;
    case TpduType::kDT:
    case TpduType::kED:
      if (p.format == TpduFormat::kClass0) {
        p.eot = (b[2] & 0x80) != 0;
        p.nr = b[2] & 0x7F;
      } else if (p.format == TpduFormat::kNormal) {
        p.dst_ref = be16(b, 2);
        p.eot = (b[4] & 0x80) != 0;
        p.nr = b[4] & 0x7F;
      } else {
        p.dst_ref = be16(b, 2);
        p.eot = (b[4] & 0x80) != 0;
        p.nr = be32(b, 4) & 0x7FFFFFFF;
      }
      break;
    case TpduType::kEA:
      p.dst_ref = be16(b, 2);
      p.nr = p.format == TpduFormat::kExtended ? (be32(b, 4) & 0x7FFFFFFF) : (b[4] & 0x7F);
      break;
    case TpduType::kAK:
    case TpduType::kRJ:
      p.dst_ref = be16(b, 2);
      if (p.format == TpduFormat::kExtended) {
        p.nr = be32(b, 4) & 0x7FFFFFFF;
        p.credit = be16(b, 8);
      } else {
        p.cdt = code & 0x0F;
        p.nr = b[4] & 0x7F;
      }
      break;
  }

  // Variable part: TLV parameters in any order until LI is used up (X.224 13.2.3).
  const std::size_t end = static_cast<std::size_t>(li) + 1;
  std::size_t at = 1 + fixed;
  std::array<bool, 256> seen{};
  while (at < end) {
    if (end - at < 2) {
      return unexpected(DecodeError{K::kParamOverrun, at, "a stray octet at the end of the variable part"});
    }
    const std::uint8_t pc = b[at];
    const std::size_t plen = b[at + 1];
    if (plen > end - at - 2) {
      return unexpected(DecodeError{K::kParamOverrun, at,
                                    "parameter " + hex2(pc) + " of length " + std::to_string(plen) +
                                        " runs past LI by " + std::to_string(plen - (end - at - 2)) + " octets"});
    }
    p.params.push_back(Param{pc, at, b.subspan(at + 2, plen)});
    if (seen[pc]) add(out, AnomalyKind::kParamDuplicate, "parameter " + hex2(pc) + " appears more than once");
    seen[pc] = true;
    if (!param_known(p.type, pc)) {
      add(out, AnomalyKind::kParamUnknown,
          "unknown parameter " + hex2(pc) + " (" + std::to_string(plen) + " octets) in " +
              std::string(tpdu_type_name(p.type)) + ", skipped");
    }
    at += 2 + plen;
  }
  if (carries_user_data(p.type)) {
    p.user_data = b.subspan(end);
  } else {
    p.trailing = b.subspan(end);
  }

  // Semantic checks: anomalies, never rejections (except strict TPDU-NR).
  if (low_nibble_is_code(p.type) && (code & 0x0F) != 0) {
    add(out, AnomalyKind::kCodeLowNibble,
        "code octet " + hex2(code) + ": low nibble of a " + std::string(tpdu_type_name(p.type)) + " must be 0");
  }
  switch (p.type) {
    case TpduType::kCR:
    case TpduType::kCC:
      check_cr_cc(p, out);
      break;
    case TpduType::kDR: {
      const auto name = dr_reason_name(*p.reason);
      if (!name) {
        add(out, AnomalyKind::kDrReasonUnknown, "DR reason " + hex2(*p.reason) + " is not defined");
      } else if (!dr_reason_is_class0(*p.reason)) {
        add(out, AnomalyKind::kDrReasonNotClass0, "DR reason " + hex2(*p.reason) + " is defined for classes 1-4 only");
      }
      if (p.user_data.size() > 64) {
        add(out, AnomalyKind::kDrDataTooLong, "DR user data of " + std::to_string(p.user_data.size()) + " octets (at most 64)");
      }
      break;
    }
    case TpduType::kER:
      if (!er_cause_name(*p.cause)) add(out, AnomalyKind::kErCauseUnknown, "ER cause " + hex2(*p.cause) + " is not defined");
      break;
    case TpduType::kDT:
    case TpduType::kED:
      if (p.format == TpduFormat::kClass0) {
        if (*p.nr != 0) {
          if (opts.strict) {
            return unexpected(DecodeError{K::kTpduNrNonZero, 2,
                                          "TPDU-NR " + std::to_string(*p.nr) + " in a class 0 " +
                                              std::string(tpdu_type_name(p.type)) + " (RFC 2126 §6.5)"});
          }
          add(out, AnomalyKind::kTpduNrNonZero,
              "TPDU-NR " + std::to_string(*p.nr) + " in a class 0 " + std::string(tpdu_type_name(p.type)) +
                  " (RFC 1006: ignored on input; RFC 2126 §6.5: must be 0)");
        }
        if (p.type == TpduType::kDT && !*p.eot && p.user_data.empty()) {
          add(out, AnomalyKind::kEmptyNonEotDt, "DT without data and without EOT (X.224 §6.3.3; an S7 habit)");
        }
        if (p.type == TpduType::kED && (p.user_data.empty() || p.user_data.size() > 16)) {
          add(out, AnomalyKind::kEdDataLength,
              "ED with " + std::to_string(p.user_data.size()) + " octets of user data (RFC 1006 §5: 1 to 16)");
        }
      } else {
        add(out, AnomalyKind::kClassNotZero,
            std::string(tpdu_type_name(p.type)) + " in the " + std::string(tpdu_format_name(p.format)) +
                " format of classes 2-4");
      }
      if (p.format == TpduFormat::kExtended) add(out, AnomalyKind::kExtendedFormat, "extended format (classes 2-4)");
      break;
    case TpduType::kDC:
    case TpduType::kAK:
    case TpduType::kEA:
    case TpduType::kRJ:
      add(out, AnomalyKind::kClassNotZero, std::string(tpdu_type_name(p.type)) + " is not used in class 0");
      if (p.format == TpduFormat::kExtended) add(out, AnomalyKind::kExtendedFormat, "extended format (classes 2-4)");
      break;
  }
  if (!p.trailing.empty()) {
    add(out, AnomalyKind::kTrailingBytes,
        std::to_string(p.trailing.size()) + " octets after the " + std::string(tpdu_type_name(p.type)) +
            " header (RFC 1006 class 0 carries one TPDU per TPKT)");
  }
  return p;
}

bool trailing_holds_cr(Bytes trailing) {
  std::size_t at = 0;
  while (at + 1 < trailing.size()) {
    const std::uint8_t li = trailing[at];
    if (li == 0) return false;  // stops Wireshark
    const std::uint8_t nibble = trailing[at + 1] >> 4;
    if (nibble == 0xE) return true;  // CR, whatever its credit
    // CC, DR, DT and ED take the rest as user data.
    if (nibble == 0xD || nibble == 0x8 || nibble == 0xF || nibble == 0x1) return false;
    at += std::size_t{li} + 1;
  }
  return false;
}

Result<Frame, DecodeError> decode_frame(Bytes tpkt, const DecodeOptions& opts, std::size_t max_length) {
  using K = DecodeErrorKind;
  if (tpkt.size() < kTpktHeaderSize) {
    return unexpected(DecodeError{K::kFramer, 0, "TPKT header incomplete"});
  }
  Frame f;
  f.header = parse_tpkt_header(tpkt);
  if (f.header.version != kTpktVersion) {
    return unexpected(DecodeError{K::kFramer, 0, "TPKT version " + std::to_string(f.header.version) + " (must be 3)"});
  }
  if (f.header.length < kTpktMinLength || f.header.length > max_length || f.header.length != tpkt.size()) {
    return unexpected(DecodeError{K::kFramer, 0,
                                  "TPKT length " + std::to_string(f.header.length) + " with " +
                                      std::to_string(tpkt.size()) + " octets present"});
  }
  f.raw = tpkt;
  if (f.header.reserved != 0) {
    f.anomalies.push_back({AnomalyKind::kReservedNonZero,
                           "TPKT reserved byte " + hex2(f.header.reserved) + " (RFC 2126 §4.3: 0; strict peers refuse it)"});
  }
  auto t = decode_tpdu(tpkt.subspan(kTpktHeaderSize), opts, &f.anomalies);
  if (!t) return unexpected(t.error());
  f.tpdu = std::move(*t);
  return f;
}

}  // namespace isoproxy::codec
