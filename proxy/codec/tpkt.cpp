#include "codec/tpkt.h"

#include <algorithm>

namespace isoproxy::codec {

TpktHeader parse_tpkt_header(Bytes four) {
  return TpktHeader{four[0], four[1], static_cast<std::uint16_t>((four[2] << 8) | four[3])};
}

std::string_view framer_error_name(FramerError e) {
  switch (e) {
    case FramerError::kNone: return "none";
    case FramerError::kBadVersion: return "tpkt-bad-version";
    case FramerError::kLengthTooShort: return "tpkt-length-too-short";
    case FramerError::kLengthTooLong: return "tpkt-length-too-long";
  }
  return "unknown";
}

TpktFramer::TpktFramer(std::size_t max_length)
    : max_length_(std::clamp<std::size_t>(max_length, kTpktMinLength, kTpktMaxLength)) {}

FramerError TpktFramer::check_header(Bytes four) {
  const TpktHeader h = parse_tpkt_header(four);
  if (h.version != kTpktVersion) return FramerError::kBadVersion;  // RFC 1006 §6 "always 3"
  if (h.length < kTpktMinLength) return FramerError::kLengthTooShort;
  if (h.length > max_length_) return FramerError::kLengthTooLong;
  return FramerError::kNone;
}

TpktFramer::Next TpktFramer::next(Bytes& in) {
  if (returned_held_) {
    held_.clear();
    expected_ = 0;
    returned_held_ = false;
  }
  if (error_ != FramerError::kNone) return {kError, {}, error_};

  if (held_.empty()) {
    // Fast path: nothing held back, frame the caller's bytes in place.
    if (in.size() >= kTpktHeaderSize) {
      error_ = check_header(in.first(kTpktHeaderSize));
      if (error_ != FramerError::kNone) return {kError, {}, error_};
      const std::size_t len = parse_tpkt_header(in).length;
      if (in.size() >= len) {
        Bytes frame = in.first(len);
        in = in.subspan(len);
        return {kFrame, frame, FramerError::kNone};
      }
      expected_ = len;
    }
    held_.assign(in.begin(), in.end());
    in = in.subspan(in.size());
    return {kNeedMore, {}, FramerError::kNone};
  }

  // Slow path: a partial frame is held; top it up.
  if (expected_ == 0) {
    const std::size_t need = kTpktHeaderSize - held_.size();
    const std::size_t take = std::min(need, in.size());
    held_.insert(held_.end(), in.begin(), in.begin() + static_cast<std::ptrdiff_t>(take));
    in = in.subspan(take);
    if (held_.size() < kTpktHeaderSize) return {kNeedMore, {}, FramerError::kNone};
    error_ = check_header(held_);
    if (error_ != FramerError::kNone) return {kError, {}, error_};
    expected_ = parse_tpkt_header(held_).length;
  }
  const std::size_t take = std::min(expected_ - held_.size(), in.size());
  held_.insert(held_.end(), in.begin(), in.begin() + static_cast<std::ptrdiff_t>(take));
  in = in.subspan(take);
  if (held_.size() < expected_) return {kNeedMore, {}, FramerError::kNone};
  returned_held_ = true;
  return {kFrame, Bytes(held_), FramerError::kNone};
}

}  // namespace isoproxy::codec
