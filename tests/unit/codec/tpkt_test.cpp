// TPKT framer edge cases (RFC 1006 §6, protocol.md §1).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <vector>

#include "codec/tpkt.h"
#include "codec/x224.h"

namespace {

using namespace isoproxy::codec;
using ByteVec = std::vector<std::uint8_t>;

// A class 0 DT TPKT with `data` bytes of user data (total 7 + data).
ByteVec dt_frame(std::size_t data, std::uint8_t fill = 0xA5, std::uint8_t reserved = 0) {
  const std::size_t len = 7 + data;
  ByteVec f(len, fill);
  const std::uint8_t head[] = {0x03, reserved, static_cast<std::uint8_t>(len >> 8), static_cast<std::uint8_t>(len & 0xFF),
                               0x02, 0xF0, 0x80};
  std::copy(std::begin(head), std::end(head), f.begin());
  return f;
}

ByteVec header(std::size_t declared, std::uint8_t version = 3) {
  return {version, 0x00, static_cast<std::uint8_t>(declared >> 8), static_cast<std::uint8_t>(declared & 0xFF)};
}

ByteVec cat(ByteVec a, const ByteVec& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

struct Drained {
  std::vector<ByteVec> frames;
  TpktFramer::Status last = TpktFramer::kNeedMore;
  FramerError error = FramerError::kNone;
};

// Feeds `chunk`, collecting frames until the framer wants more or fails.
void drain(TpktFramer& f, const ByteVec& chunk, Drained& out) {
  Bytes in(chunk);
  for (;;) {
    auto r = f.next(in);
    out.last = r.status;
    if (r.status == TpktFramer::kFrame) {
      out.frames.emplace_back(r.frame.begin(), r.frame.end());
      continue;
    }
    if (r.status == TpktFramer::kError) out.error = r.error;
    return;
  }
}

Drained feed_chunks(const std::vector<ByteVec>& chunks, std::size_t max = kTpktMaxLength) {
  TpktFramer f(max);
  Drained d;
  for (const auto& c : chunks) {
    drain(f, c, d);
    if (d.last == TpktFramer::kError) break;
  }
  return d;
}

}  // namespace

TEST_CASE("tpkt: header parsing", "[tpkt]") {
  const ByteVec h{0x03, 0x11, 0x01, 0x2C};
  const TpktHeader t = parse_tpkt_header(Bytes(h));
  CHECK(t.version == 3);
  CHECK(t.reserved == 0x11);
  CHECK(t.length == 0x012C);
  const ByteVec big{0x03, 0x00, 0xFF, 0xFF};
  CHECK(parse_tpkt_header(Bytes(big)).length == 65535);
}

TEST_CASE("tpkt: error names are stable", "[tpkt]") {
  CHECK(framer_error_name(FramerError::kNone) == "none");
  CHECK(framer_error_name(FramerError::kBadVersion) == "tpkt-bad-version");
  CHECK(framer_error_name(FramerError::kLengthTooShort) == "tpkt-length-too-short");
  CHECK(framer_error_name(FramerError::kLengthTooLong) == "tpkt-length-too-long");
}

TEST_CASE("tpkt: maximum length is configurable", "[tpkt]") {
  CHECK(TpktFramer().max_length() == 65535);
  CHECK(TpktFramer(100).max_length() == 100);
  // Clamped to the RFC's range.
  CHECK(TpktFramer(0).max_length() == 7);
  CHECK(TpktFramer(3).max_length() == 7);
  CHECK(TpktFramer(1'000'000).max_length() == 65535);

  SECTION("a frame of exactly the maximum passes") {
    const auto d = feed_chunks({dt_frame(93)}, 100);
    REQUIRE(d.frames.size() == 1);
    CHECK(d.frames[0].size() == 100);
  }
  SECTION("one byte above it is kLengthTooLong, whole") {
    TpktFramer f(100);
    const ByteVec frame = dt_frame(94);
    Bytes in(frame);
    auto r = f.next(in);
    CHECK(r.status == TpktFramer::kError);
    CHECK(r.error == FramerError::kLengthTooLong);
    CHECK(f.failed());
    CHECK(f.error() == FramerError::kLengthTooLong);
    CHECK(in.size() == frame.size());  // nothing consumed: the caller has it all
    CHECK(f.held() == 0);
  }
  SECTION("one byte above it is kLengthTooLong, as soon as the header is complete") {
    TpktFramer f(100);
    const ByteVec frame = dt_frame(94);
    for (std::size_t i = 0; i < 3; ++i) {
      Bytes in(&frame[i], 1);
      CHECK(f.next(in).status == TpktFramer::kNeedMore);
    }
    Bytes in(&frame[3], frame.size() - 3);
    auto r = f.next(in);
    CHECK(r.status == TpktFramer::kError);
    CHECK(r.error == FramerError::kLengthTooLong);
    // The header bytes it had held are still there; the rest is the caller's.
    CHECK(f.held() == 4);
    CHECK(ByteVec(f.held_bytes().begin(), f.held_bytes().end()) == ByteVec(frame.begin(), frame.begin() + 4));
    CHECK(in.size() == frame.size() - 4);
  }
  SECTION("the default maximum lets 65535 through") {
    const ByteVec h = header(65535);
    TpktFramer f;
    Bytes in(h);
    CHECK(f.next(in).status == TpktFramer::kNeedMore);
    CHECK(f.expected() == 65535);
  }
}

TEST_CASE("tpkt: minimum length 7", "[tpkt]") {
  SECTION("7 is a frame") {
    const auto d = feed_chunks({dt_frame(0)});
    REQUIRE(d.frames.size() == 1);
    CHECK(d.frames[0] == ByteVec{0x03, 0x00, 0x00, 0x07, 0x02, 0xF0, 0x80});
    CHECK(d.last == TpktFramer::kNeedMore);
  }
  for (std::size_t declared = 0; declared < 7; ++declared) {
    DYNAMIC_SECTION("declared length " << declared << " is kLengthTooShort") {
      ByteVec bytes = cat(header(declared), ByteVec{0x02, 0xF0, 0x80});
      const auto whole = feed_chunks({bytes});
      CHECK(whole.last == TpktFramer::kError);
      CHECK(whole.error == FramerError::kLengthTooShort);
      CHECK(whole.frames.empty());
      std::vector<ByteVec> singles;
      for (auto b : bytes) singles.push_back({b});
      const auto split = feed_chunks(singles);
      CHECK(split.error == FramerError::kLengthTooShort);
    }
  }
  SECTION("version other than 3 is kBadVersion, even before the length is known") {
    for (std::uint8_t v : {0x00, 0x01, 0x02, 0x04, 0x16, 0xFF}) {
      INFO("version " << int(v));
      const auto d = feed_chunks({cat(header(7, v), ByteVec{0x02, 0xF0, 0x80})});
      CHECK(d.error == FramerError::kBadVersion);
    }
  }
  SECTION("a non-zero reserved byte does not stop framing") {
    for (std::uint8_t r : {0x01, 0x11, 0x80, 0xFF}) {
      const auto d = feed_chunks({dt_frame(2, 0x00, r)});
      REQUIRE(d.frames.size() == 1);
      CHECK(d.frames[0][1] == r);
    }
  }
}

TEST_CASE("tpkt: a 65535-byte frame", "[tpkt]") {
  const ByteVec big = dt_frame(65528, 0x5A);
  REQUIRE(big.size() == 65535);

  SECTION("whole: one span into the input") {
    TpktFramer f;
    Bytes in(big);
    auto r = f.next(in);
    REQUIRE(r.status == TpktFramer::kFrame);
    CHECK(r.frame.data() == big.data());
    CHECK(r.frame.size() == 65535);
    CHECK(in.empty());
    auto d = decode_frame(r.frame);
    REQUIRE(d.ok());
    CHECK(d->tpdu.user_data.size() == 65528);
    CHECK(d->anomalies.empty());
  }
  SECTION("in 1000-byte reads: assembled, identical") {
    std::vector<ByteVec> chunks;
    for (std::size_t at = 0; at < big.size(); at += 1000) {
      chunks.emplace_back(big.begin() + static_cast<std::ptrdiff_t>(at),
                          big.begin() + static_cast<std::ptrdiff_t>(std::min(at + 1000, big.size())));
    }
    const auto d = feed_chunks(chunks);
    REQUIRE(d.frames.size() == 1);
    CHECK(d.frames[0] == big);
  }
  SECTION("followed by a small frame in the same read") {
    const ByteVec small = dt_frame(1);
    const auto d = feed_chunks({cat(big, small)});
    REQUIRE(d.frames.size() == 2);
    CHECK(d.frames[0] == big);
    CHECK(d.frames[1] == small);
  }
}

TEST_CASE("tpkt: many tiny frames in one buffer", "[tpkt]") {
  ByteVec buf;
  constexpr std::size_t kCount = 1000;
  for (std::size_t i = 0; i < kCount; ++i) {
    ByteVec fr = dt_frame(i % 5, static_cast<std::uint8_t>(i));
    buf.insert(buf.end(), fr.begin(), fr.end());
  }
  TpktFramer f;
  Bytes in(buf);
  std::size_t n = 0, offset = 0;
  for (;;) {
    auto r = f.next(in);
    if (r.status != TpktFramer::kFrame) {
      CHECK(r.status == TpktFramer::kNeedMore);
      break;
    }
    // Zero copy: each frame is the next slice of the input.
    CHECK(r.frame.data() == buf.data() + offset);
    CHECK(r.frame.size() == 7 + n % 5);
    offset += r.frame.size();
    ++n;
  }
  CHECK(n == kCount);
  CHECK(offset == buf.size());
  CHECK(f.held() == 0);
}

TEST_CASE("tpkt: a stream split at every position", "[tpkt]") {
  // V1-like CC (44 bytes) followed by a DT, then a 7-byte DT.
  const ByteVec first = dt_frame(37, 0x41, 0x11);
  const ByteVec second = dt_frame(2);
  const ByteVec third = dt_frame(0);
  const ByteVec stream = cat(cat(first, second), third);
  const std::vector<ByteVec> want{first, second, third};

  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    INFO("split at " << cut);
    const ByteVec a(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(cut));
    const ByteVec b(stream.begin() + static_cast<std::ptrdiff_t>(cut), stream.end());
    const auto d = feed_chunks({a, b});
    CHECK(d.frames == want);
    CHECK(d.last == TpktFramer::kNeedMore);
  }
  // Every pair of cut points inside the first header and across the second.
  for (std::size_t i = 0; i <= 8; ++i) {
    for (std::size_t j = i; j <= stream.size(); ++j) {
      INFO("split at " << i << " and " << j);
      const auto d = feed_chunks({ByteVec(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(i)),
                                  ByteVec(stream.begin() + static_cast<std::ptrdiff_t>(i), stream.begin() + static_cast<std::ptrdiff_t>(j)),
                                  ByteVec(stream.begin() + static_cast<std::ptrdiff_t>(j), stream.end())});
      CHECK(d.frames == want);
    }
  }
}

TEST_CASE("tpkt: header split at every position", "[tpkt]") {
  const ByteVec frame = dt_frame(2, 0xEE);
  for (std::size_t cut = 1; cut < 4; ++cut) {
    INFO("header split after " << cut << " bytes");
    TpktFramer f;
    ByteVec a(frame.begin(), frame.begin() + static_cast<std::ptrdiff_t>(cut));
    ByteVec b(frame.begin() + static_cast<std::ptrdiff_t>(cut), frame.end());
    Bytes in(a);
    CHECK(f.next(in).status == TpktFramer::kNeedMore);
    CHECK(in.empty());
    CHECK(f.held() == cut);
    CHECK(f.expected() == 0);  // header incomplete
    Bytes rest(b);
    auto r = f.next(rest);
    REQUIRE(r.status == TpktFramer::kFrame);
    CHECK(ByteVec(r.frame.begin(), r.frame.end()) == frame);
    CHECK(rest.empty());
  }
}

TEST_CASE("tpkt: held() and expected()", "[tpkt]") {
  const ByteVec frame = dt_frame(2, 0xEE);  // 9 bytes
  TpktFramer f;
  CHECK(f.held() == 0);
  CHECK(f.expected() == 0);

  ByteVec c1{frame[0], frame[1]};
  Bytes in(c1);
  CHECK(f.next(in).status == TpktFramer::kNeedMore);
  CHECK(f.held() == 2);
  CHECK(f.expected() == 0);

  ByteVec c2{frame[2], frame[3]};
  in = Bytes(c2);
  CHECK(f.next(in).status == TpktFramer::kNeedMore);
  CHECK(f.held() == 4);
  CHECK(f.expected() == 9);

  ByteVec c3{frame[4], frame[5], frame[6]};
  in = Bytes(c3);
  CHECK(f.next(in).status == TpktFramer::kNeedMore);
  CHECK(f.held() == 7);
  CHECK(f.expected() == 9);
  CHECK(ByteVec(f.held_bytes().begin(), f.held_bytes().end()) == ByteVec(frame.begin(), frame.begin() + 7));

  // The last two bytes and the start of the next frame.
  ByteVec c4{frame[7], frame[8], 0x03, 0x00, 0x00};
  in = Bytes(c4);
  auto r = f.next(in);
  REQUIRE(r.status == TpktFramer::kFrame);
  CHECK(ByteVec(r.frame.begin(), r.frame.end()) == frame);
  CHECK(in.size() == 3);
  // Nothing incomplete is held once the frame is out: a peer closing now has
  // not truncated anything (the header's "at end of stream" rule).
  CHECK(f.held() == 0);
  CHECK(f.held_bytes().empty());
  CHECK(f.expected() == 0);
  // The returned span stays valid until the next call.
  CHECK(ByteVec(r.frame.begin(), r.frame.end()) == frame);

  r = f.next(in);
  CHECK(r.status == TpktFramer::kNeedMore);
  CHECK(in.empty());
  CHECK(f.held() == 3);
  CHECK(f.expected() == 0);

  SECTION("fast path: an incomplete frame with a whole header") {
    TpktFramer g;
    ByteVec part(frame.begin(), frame.begin() + 5);
    Bytes p(part);
    CHECK(g.next(p).status == TpktFramer::kNeedMore);
    CHECK(p.empty());
    CHECK(g.held() == 5);
    CHECK(g.expected() == 9);
  }
  SECTION("shrink() keeps an incomplete frame") {
    f.shrink();
    CHECK(f.held() == 3);
  }
}

TEST_CASE("tpkt: empty reads", "[tpkt]") {
  TpktFramer f;
  ByteVec none;
  Bytes in(none);
  CHECK(f.next(in).status == TpktFramer::kNeedMore);
  CHECK(f.held() == 0);
  const ByteVec frame = dt_frame(1);
  ByteVec a(frame.begin(), frame.begin() + 2);
  in = Bytes(a);
  CHECK(f.next(in).status == TpktFramer::kNeedMore);
  in = Bytes(none);
  CHECK(f.next(in).status == TpktFramer::kNeedMore);
  CHECK(f.held() == 2);
  ByteVec b(frame.begin() + 2, frame.end());
  in = Bytes(b);
  auto r = f.next(in);
  REQUIRE(r.status == TpktFramer::kFrame);
  CHECK(ByteVec(r.frame.begin(), r.frame.end()) == frame);
}

TEST_CASE("tpkt: after an error the framer stays failed", "[tpkt]") {
  const ByteVec good = dt_frame(1);
  const ByteVec bad = cat(header(7, 4), ByteVec{0x02, 0xF0, 0x80});
  const ByteVec stream = cat(good, bad);
  TpktFramer f;
  Bytes in(stream);
  auto r = f.next(in);
  REQUIRE(r.status == TpktFramer::kFrame);
  r = f.next(in);
  REQUIRE(r.status == TpktFramer::kError);
  CHECK(r.error == FramerError::kBadVersion);
  CHECK(in.size() == bad.size());  // the bad frame is left for the caller

  // Even perfectly good bytes are refused now, and not consumed.
  for (int i = 0; i < 3; ++i) {
    Bytes more(good);
    auto again = f.next(more);
    CHECK(again.status == TpktFramer::kError);
    CHECK(again.error == FramerError::kBadVersion);
    CHECK(again.frame.empty());
    CHECK(more.size() == good.size());
  }
  CHECK(f.failed());
  CHECK(f.error() == FramerError::kBadVersion);
}

TEST_CASE("tpkt: zero copy", "[tpkt]") {
  const ByteVec a = dt_frame(3, 0x11);
  const ByteVec b = dt_frame(4, 0x22);

  SECTION("a whole frame in the input is a span into the input") {
    const ByteVec both = cat(a, b);
    TpktFramer f;
    Bytes in(both);
    auto r1 = f.next(in);
    REQUIRE(r1.status == TpktFramer::kFrame);
    CHECK(r1.frame.data() == both.data());
    CHECK(r1.frame.size() == a.size());
    auto r2 = f.next(in);
    REQUIRE(r2.status == TpktFramer::kFrame);
    CHECK(r2.frame.data() == both.data() + a.size());
  }
  SECTION("a frame split across reads comes from the framer's buffer; the next whole one from the input") {
    const ByteVec first(a.begin(), a.begin() + 5);
    const ByteVec second = cat(ByteVec(a.begin() + 5, a.end()), b);
    TpktFramer f;
    Bytes in(first);
    CHECK(f.next(in).status == TpktFramer::kNeedMore);
    in = Bytes(second);
    auto r1 = f.next(in);
    REQUIRE(r1.status == TpktFramer::kFrame);
    CHECK(ByteVec(r1.frame.begin(), r1.frame.end()) == a);
    const bool in_input = r1.frame.data() >= second.data() && r1.frame.data() < second.data() + second.size();
    CHECK_FALSE(in_input);
    auto r2 = f.next(in);
    REQUIRE(r2.status == TpktFramer::kFrame);
    CHECK(r2.frame.data() == second.data() + (a.size() - 5));
    CHECK(ByteVec(r2.frame.begin(), r2.frame.end()) == b);
  }
}
