// X.224 / ISO 8073 TPDU decoding (protocol.md §2-§4). Every TPDU type is
// recognised: class 0 layouts as RFC 1006 uses them, and the normal and
// extended formats of classes 1-4 for recognition. Decoding never copies:
// a Tpdu is a view into the bytes it was decoded from.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "codec/tpkt.h"
#include "result.h"

namespace isoproxy::codec {

enum class TpduType : std::uint8_t {
  kED = 0x1, kEA = 0x2, kRJ = 0x5, kAK = 0x6, kER = 0x7,
  kDR = 0x8, kDC = 0xC, kCC = 0xD, kCR = 0xE, kDT = 0xF,
};
std::string_view tpdu_type_name(TpduType t);              // "CR"
std::string_view tpdu_type_long_name(TpduType t);         // "Connection Request"

// Layout of the fixed part, inferred from LI as Wireshark does (X.224 13.x).
enum class TpduFormat : std::uint8_t {
  kClass0,    // RFC 1006 class 0/1 shape (DT/ED with LI 2; CR/CC/DR/ER/DC)
  kNormal,    // classes 2-4 normal format (DST-REF present, 1-octet numbers)
  kExtended,  // classes 2-4 extended format (4-octet numbers)
};
std::string_view tpdu_format_name(TpduFormat f);

// Parameter codes (protocol.md §3).
namespace param {
inline constexpr std::uint8_t kTpduSize = 0xC0;
inline constexpr std::uint8_t kCallingTsap = 0xC1;
inline constexpr std::uint8_t kCalledTsap = 0xC2;
inline constexpr std::uint8_t kInvalidTpdu = 0xC1;  // in an ER
inline constexpr std::uint8_t kChecksum = 0xC3;
inline constexpr std::uint8_t kVersion = 0xC4;
inline constexpr std::uint8_t kProtection = 0xC5;
inline constexpr std::uint8_t kAdditionalOptions = 0xC6;
inline constexpr std::uint8_t kAlternativeClasses = 0xC7;
inline constexpr std::uint8_t kPreferredMaxTpduSize = 0xF0;
inline constexpr std::uint8_t kInactivityTimer = 0xF2;
inline constexpr std::uint8_t kAdditionalClearingInfo = 0xE0;
}  // namespace param

// Name of a parameter code in the context of a TPDU type; empty if unknown.
std::string_view param_name(TpduType t, std::uint8_t code);
// Names of DR reasons (protocol.md §4) and ER causes; nullopt for values no
// standard defines (kept and shown as unknown, never refused).
std::optional<std::string_view> dr_reason_name(std::uint8_t reason);
std::optional<std::string_view> er_cause_name(std::uint8_t cause);
// DR reasons a class 0 entity may send (X.224: 0-3).
inline bool dr_reason_is_class0(std::uint8_t r) { return r <= 3; }
// TPDU size code (parameter 0xC0) to octets: 0x07..0x0D per X.224, 0x0E..0x10
// as Tandem/HP write them for RFC 1006 (0x10 = 65531). nullopt if undefined.
std::optional<std::uint32_t> tpdu_size_octets(std::uint8_t code);

struct Param {
  std::uint8_t code = 0;
  std::size_t offset = 0;  // of the code octet, from the start of the TPDU (the LI octet)
  Bytes value;
};

// Warnings: the frame is relayed, the anomaly is counted and shown.
enum class AnomalyKind : std::uint8_t {
  kReservedNonZero,      // TPKT reserved byte != 0 (RFC 2126 §4.3 says 0)
  kClassNotZero,         // CR/CC class != 0, or a classes 1-4 TPDU/format on RFC 1006
  kClassUndefined,       // class > 4 (Wireshark: "not COTP")
  kTpduSizeOverClass0,   // TPDU size > 2048 proposed in class 0 (ISO 8073 13.3.4)
  kTpduSizeNonStandard,  // codes 0x0E-0x10 (Tandem RFC 1006) or outside 0x07-0x10
  kTpduNrNonZero,        // class 0 DT/ED with TPDU-NR != 0 (RFC 2126 §6.5)
  kEmptyNonEotDt,        // non-EOT DT without data (X.224 §6.3.3; S7 quirk)
  kDrReasonNotClass0,    // DR reason outside 0-3 (common: 0x80)
  kDrReasonUnknown,      // DR reason no standard defines
  kErCauseUnknown,       // ER cause > 3
  kCdtNonZero,           // CR/CC credit nibble != 0 in class 0/1
  kCodeLowNibble,        // low nibble set on a type that has none (DR, DT, ER, ...)
  kParamUnknown,         // parameter code unknown for this TPDU type (skipped)
  kParamDuplicate,       // the same parameter code twice
  kParamBadLength,       // a fixed-length parameter with the wrong length
  kTsapLength,           // TSAP of length 0 or > 32 (Wireshark: unsupported)
  kDstRefInCr,           // CR with DST-REF != 0
  kUserDataInClass0,     // CR/CC user data in class 0 (RFC 1006 §5 allows it)
  kCrTooLong,            // CR over 128 octets (RFC 905 §13.3)
  kTrailingBytes,        // bytes after a TPDU that carries no user data
  kReverseConnection,    // 0xC6 bit 4: RFC 2126 class 2 reverse connection
  kDrDataTooLong,        // DR user data over 64 octets
  kExtendedFormat,       // extended (classes 2-4) format
  kClassOptions,         // CR/CC class 0 or 1 with option bits set (class 0 uses 0x00)
  kEdDataLength,         // ED without user data, or with more than 16 octets
};
std::string_view anomaly_name(AnomalyKind k);  // stable kebab-case, used as a counter name
inline constexpr std::size_t kAnomalyKinds = static_cast<std::size_t>(AnomalyKind::kEdDataLength) + 1;

struct Anomaly {
  AnomalyKind kind;
  std::string detail;
};

// Rejections: the decoder cannot make sense of the frame.
enum class DecodeErrorKind : std::uint8_t {
  kEmpty,            // no TPDU bytes
  kLiZero,           // LI = 0 (Wireshark: "Length indicator is zero")
  kLiReserved,       // LI = 255 (reserved for extension)
  kLiOverrun,        // LI runs past the TPDU
  kLiTooShort,       // LI below the fixed part of the type
  kLiInvalid,        // LI not one of the values the type allows (DT LI 3)
  kUnknownType,      // type nibble no TPDU has
  kParamOverrun,     // a parameter runs past LI
  kTpduNrNonZero,    // strict mode only: class 0 TPDU-NR != 0 (RFC 2126 §6.5)
  kFramer,           // TPKT-level error (from the framer)
};
std::string_view decode_error_name(DecodeErrorKind k);
inline constexpr std::size_t kDecodeErrorKinds = static_cast<std::size_t>(DecodeErrorKind::kFramer) + 1;

struct DecodeError {
  DecodeErrorKind kind;
  std::size_t offset = 0;  // in the TPDU (0 = LI octet)
  std::string detail;
};

struct DecodeOptions {
  // RFC 2126 §6.5: reject a class 0 DT/ED whose TPDU-NR is not 0. Off in the
  // relay, which tolerates and counts it (RFC 1006 says "ignored on input").
  bool strict = false;
};

struct Tpdu {
  Bytes bytes;               // the whole TPDU, from the LI octet
  std::uint8_t li = 0;
  std::uint8_t code = 0;     // the whole code octet
  TpduType type = TpduType::kDT;
  TpduFormat format = TpduFormat::kClass0;
  std::uint8_t cdt = 0;      // credit nibble (CR/CC/AK/RJ), or 2-octet credit in extended AK/RJ
  std::optional<std::uint16_t> dst_ref, src_ref;
  std::optional<std::uint8_t> class_option;  // CR/CC octet P+6
  std::optional<std::uint8_t> reason;        // DR
  std::optional<std::uint8_t> cause;         // ER
  std::optional<bool> eot;                   // DT/ED
  std::optional<std::uint32_t> nr;           // DT/ED TPDU-NR, AK/EA/RJ YR-TU-NR
  std::optional<std::uint16_t> credit;       // extended AK/RJ
  std::vector<Param> params;
  Bytes user_data;   // CR/CC/DR/DT/ED
  Bytes trailing;    // bytes after a TPDU without user data

  std::size_t fixed_length() const;  // fixed part, LI octet excluded
  const Param* find(std::uint8_t code) const;  // first occurrence
  std::optional<Bytes> calling_tsap() const;   // CR/CC only
  std::optional<Bytes> called_tsap() const;
  std::optional<std::uint8_t> tpdu_size_code() const;
  std::optional<std::uint8_t> preferred_class() const {
    if (!class_option) return std::nullopt;
    return static_cast<std::uint8_t>(*class_option >> 4);
  }
};

// Decodes one TPDU (the bytes after a TPKT header). Anomalies, if wanted, are
// appended to *anomalies.
Result<Tpdu, DecodeError> decode_tpdu(Bytes tpdu, const DecodeOptions& opts = {},
                                      std::vector<Anomaly>* anomalies = nullptr);

// Whether the octets after a TPDU without user data (Tpdu::trailing) hold a
// CR, read as Wireshark reads them (protocol.md §6.1): further TPDUs, each
// LI+1 octets, until one that carries user data takes the rest (or an LI of
// 0 stops). Class 0 never concatenates (RFC 1006 §6), but a peer that does
// could see a CR there that no filter judged.
bool trailing_holds_cr(Bytes trailing);

// A decoded TPKT: header, the TPDU in it, and everything odd about both.
struct Frame {
  TpktHeader header;
  Bytes raw;  // the whole TPKT
  Tpdu tpdu;
  std::vector<Anomaly> anomalies;
};

// Decodes one whole TPKT as the framer returns it (header already checked by
// the framer; checked again here so the call stands alone).
Result<Frame, DecodeError> decode_frame(Bytes tpkt, const DecodeOptions& opts = {},
                                        std::size_t max_length = kTpktMaxLength);

}  // namespace isoproxy::codec
