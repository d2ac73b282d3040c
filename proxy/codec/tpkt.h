// TPKT framing (RFC 1006 §6, RFC 2126 §4.3): an incremental, per-direction
// framer that finds frame boundaries in a TCP byte stream however it is split
// or coalesced. No libuv, no OpenSSL: the codec is fuzzed and reused alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace isoproxy::codec {

using Bytes = std::span<const std::uint8_t>;

inline constexpr std::size_t kTpktHeaderSize = 4;
inline constexpr std::uint8_t kTpktVersion = 3;
// RFC 1006 §6: "min=7, max=65535" (header + the 3-octet class 0 DT).
inline constexpr std::size_t kTpktMinLength = 7;
inline constexpr std::size_t kTpktMaxLength = 65535;

struct TpktHeader {
  std::uint8_t version = 0;
  std::uint8_t reserved = 0;  // RFC 2126 §6.10: reported, never a reason to reject
  std::uint16_t length = 0;   // whole TPKT including the header
};

// Reads the header from the first four bytes; the caller guarantees them.
TpktHeader parse_tpkt_header(Bytes four);

enum class FramerError : std::uint8_t {
  kNone,
  kBadVersion,      // byte 0 != 3
  kLengthTooShort,  // declared length < 7
  kLengthTooLong,   // declared length > the configured maximum
};
std::string_view framer_error_name(FramerError e);

// Splits one direction of a stream into whole TPKTs.
//
//   TpktFramer f;
//   Bytes in = bytes_just_read;
//   for (;;) {
//     auto r = f.next(in);          // advances `in` past what it consumed
//     if (r.status == TpktFramer::kFrame) use(r.frame);
//     else break;                   // kNeedMore: wait for bytes; kError: see r.error
//   }
//
// A frame lying wholly inside `in` is returned as a span into `in` (no copy).
// A frame split across reads is assembled in an internal buffer and returned
// from there; either span is valid until the next call. After an error the
// framer stays failed: the bytes it had held back are in held(), the rest of
// the stream is the caller's to pass through raw or refuse.
class TpktFramer {
 public:
  enum Status : std::uint8_t { kFrame, kNeedMore, kError };
  struct Next {
    Status status;
    Bytes frame;                          // kFrame: the whole TPKT
    FramerError error = FramerError::kNone;  // kError
  };

  explicit TpktFramer(std::size_t max_length = kTpktMaxLength);

  Next next(Bytes& in);

  // Bytes of an incomplete frame held since the last complete one. At end of
  // stream a non-zero value means the peer closed mid-frame (truncated).
  // (A frame just returned from the internal buffer is complete, not held.)
  std::size_t held() const { return returned_held_ ? 0 : held_.size(); }
  Bytes held_bytes() const { return returned_held_ ? Bytes{} : Bytes(held_); }
  // Declared length of the frame being assembled, 0 while the header is incomplete.
  std::size_t expected() const { return returned_held_ ? 0 : expected_; }
  bool failed() const { return error_ != FramerError::kNone; }
  FramerError error() const { return error_; }
  std::size_t max_length() const { return max_length_; }
  // Drops the partial frame held back (the caller will not relay it), so the
  // framer stands at a frame boundary again.
  void discard() {
    held_.clear();
    expected_ = 0;
    returned_held_ = false;
  }
  // Frees the assembly buffer's memory when no partial frame is held (an idle
  // session holds none). Invalidates a frame returned from the buffer, so
  // call it only once that frame has been used.
  void shrink() {
    if (returned_held_) {
      held_.clear();
      expected_ = 0;
      returned_held_ = false;
    }
    if (held_.empty()) std::vector<std::uint8_t>().swap(held_);
  }

 private:
  FramerError check_header(Bytes four);

  std::size_t max_length_;
  std::vector<std::uint8_t> held_;
  std::size_t expected_ = 0;
  bool returned_held_ = false;  // the last frame came from held_; clear it on the next call
  FramerError error_ = FramerError::kNone;
};

}  // namespace isoproxy::codec
