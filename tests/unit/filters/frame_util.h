// Helpers the filter unit tests share: vector rows by id, and frames edited
// through the codec (decode, change a parameter, re-encode).
#pragma once

#include <catch2/catch.hpp>
#include <cstdint>
#include <vector>

#include "codec/encode.h"
#include "codec/x224.h"
#include "support/vectors.h"

namespace isoproxy::test {

using ByteVec = std::vector<std::uint8_t>;

inline const std::vector<Vector>& rows() {
  static const auto r = load_vectors();
  return r;
}
inline ByteVec row(const char* id) { return find_vector(rows(), id).bytes(); }

inline codec::OwnedTpdu owned(const ByteVec& frame) {
  auto f = codec::decode_frame(frame);
  REQUIRE(f.ok());
  return codec::OwnedTpdu::from(f->tpdu);
}

inline ByteVec encode(const codec::OwnedTpdu& t, std::uint8_t reserved = 0) {
  auto b = codec::encode_frame(reserved, t);
  REQUIRE(b.ok());
  return *b;
}

// `frame` with the first parameter `code` given `value` (or appended).
inline ByteVec with_param(const ByteVec& frame, std::uint8_t code, const ByteVec& value) {
  codec::OwnedTpdu t = owned(frame);
  t.set_param(code, value);
  return encode(t, frame[1]);
}

// `frame` without its parameter `code` (which must appear once).
inline ByteVec without_param(const ByteVec& frame, std::uint8_t code) {
  codec::OwnedTpdu t = owned(frame);
  REQUIRE(t.remove_param(code) == 1);
  return encode(t, frame[1]);
}

}  // namespace isoproxy::test
