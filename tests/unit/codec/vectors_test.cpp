// Every row of the shared frames.tsv, loaded from the file (never copied
// here), fed to the framer whole, as recorded, byte by byte and at random
// splits, decoded, and checked against the expectation column mechanically:
// the verdict, the kind column, every key=value token and the phrase forms
// listed in RowChecker::check_phrases(). A key=value token this file does
// not know fails the row, so a new vector with a new key cannot be silently
// ignored: teach the checker the key first.
//
// Verdicts (start of the expectation): "accept", "reject", "need-more",
// "reject in strict mode ...; tolerate+count in relay mode". No verdict word
// (N5, N6) with TPDU types in the kind column means accept.
// Kind column: TPDU types joined by '+', in frame order; "?" = no TPDU type
// was established (framer error, need-more, or a decode error raised before
// the type: LI 0, LI 255, LI overrun, unknown type). A rejected row with a
// real kind must have that type nibble and fail after the type was known.
// Keys (case-insensitive; value 0x-hex or decimal; TSAPs "ASCII", unquoted
// even-length hex = bytes, else ASCII), checked on every decoded frame:
//   reserved calling called tpdu_size dst_ref src_ref class cause reason
//   invalid-tpdu tpdu-nr eot li
// Phrases: "fix: ID", "ID repaired", "relay untouched", "same length N",
//   "smallest valid TPKT", "one N-byte XX", "N frames", "in/across N reads",
//   "header split across", "reason N ... [unknown]", "cause N",
//   "user data HEX", "alternative classes a,b,c", "unknown param 0xNN skipped",
//   "class N flagged as anomaly", "parameter order C0 C2 ...",
//   "echoes ID TSAPs", "PG|OP|S7-Basic rack R slot S", "(hex)", "(ASCII)",
//   "EOT", "no EOT", "non-EOT", "empty non-EOT DT", "LI N", "LI = N",
//   "version N", "TPKT length N < 7", "parameter XX length N overruns LI",
//   "XX with LI N in class 0", "declared N, M present", "header incomplete".
// Other free text is commentary. Each feed's framer run must agree with the
// others; random splits use fixed std::mt19937 seeds (kSeeds), named in
// every failure message.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 with -fsanitize=address reports -Wmaybe-uninitialized inside
// libstdc++'s <regex> (std::function moves in _NFA); a false positive that
// Catch2's own main.cpp shows too. Silence it for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "codec/encode.h"
#include "codec/text.h"
#include "codec/tpkt.h"
#include "codec/x224.h"
#include "support/vectors.h"

namespace {

using namespace isoproxy::codec;
using isoproxy::test::Vector;
using ByteVec = std::vector<std::uint8_t>;

std::string hex(Bytes b) { return to_hex(b); }
std::string hex(const ByteVec& b) { return to_hex(Bytes(b)); }

// Fixed seeds, so a failing split is reproducible; the seed is in the feed's name.
constexpr std::uint32_t kSeeds[] = {1, 2, 3, 42, 102, 1006, 2126, 65535};

// ---------------------------------------------------------------------------
// Feeding the framer

struct Feed {
  std::string name;
  std::vector<ByteVec> chunks;
};

ByteVec concat(const std::vector<ByteVec>& parts) {
  ByteVec all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

// mt19937 is fully specified, and `% n` (unlike uniform_int_distribution) is
// the same on every standard library: a seed reproduces the same splits anywhere.
std::vector<ByteVec> random_split(const ByteVec& all, std::uint32_t seed) {
  std::mt19937 rng(seed);
  const std::size_t n = all.size();
  std::set<std::size_t> cuts;
  if (n > 1) {
    const std::size_t k = 1 + rng() % std::min<std::size_t>(n - 1, 12);
    for (std::size_t i = 0; i < k; ++i) cuts.insert(1 + rng() % (n - 1));
  }
  std::vector<ByteVec> chunks;
  std::size_t at = 0;
  for (std::size_t cut : cuts) {
    chunks.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(at), all.begin() + static_cast<std::ptrdiff_t>(cut));
    at = cut;
  }
  chunks.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(at), all.end());
  // Now and then an empty read (a zero-length callback) somewhere in the stream.
  if (rng() % 2 == 0) chunks.insert(chunks.begin() + static_cast<std::ptrdiff_t>(rng() % (chunks.size() + 1)), ByteVec{});
  return chunks;
}

std::vector<Feed> feeds_for(const std::vector<ByteVec>& segments) {
  const ByteVec all = concat(segments);
  std::vector<Feed> feeds;
  feeds.push_back({"as recorded", segments});
  feeds.push_back({"whole", {all}});
  Feed bytes{"byte by byte", {}};
  for (std::uint8_t b : all) bytes.chunks.push_back({b});
  feeds.push_back(std::move(bytes));
  for (std::uint32_t seed : kSeeds) feeds.push_back({"random split, seed " + std::to_string(seed), random_split(all, seed)});
  return feeds;
}

struct FeedResult {
  std::vector<ByteVec> frames;  // copies: the framer's spans die on the next call
  bool failed = false;
  FramerError error = FramerError::kNone;
  std::size_t held = 0, expected = 0;  // at the end, if not failed
  ByteVec leftover;                    // held bytes plus whatever the framer did not consume
  std::vector<std::string> problems;   // framer API contract violations
};

bool inside(Bytes part, Bytes whole) {
  return !part.empty() && part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

FeedResult run_framer(const std::vector<ByteVec>& chunks, std::size_t max_length = kTpktMaxLength) {
  TpktFramer f(max_length);
  FeedResult r;
  auto problem = [&r](const std::string& s) { r.problems.push_back(s); };
  for (std::size_t ci = 0; ci < chunks.size(); ++ci) {
    const Bytes chunk(chunks[ci]);
    Bytes in = chunk;
    for (int guard = 0;; ++guard) {
      if (guard > 100000) {
        problem("framer loops without progress");
        return r;
      }
      const std::size_t before = in.size();
      const std::size_t held_before = f.held();
      const auto n = f.next(in);
      if (n.status == TpktFramer::kFrame) {
        r.frames.emplace_back(n.frame.begin(), n.frame.end());
        if (n.frame.size() < kTpktMinLength || parse_tpkt_header(n.frame).length != n.frame.size()) {
          problem("frame of " + std::to_string(n.frame.size()) + " bytes does not match its TPKT length");
        }
        // Zero copy: with nothing held, a frame can only come from the input.
        if (held_before == 0 && !inside(n.frame, chunk)) problem("frame with nothing held is not a span into the input");
        if (held_before != 0 && inside(n.frame, chunk)) problem("frame assembled from held bytes points into the input");
        if (f.held() != 0 || f.expected() != 0) {
          problem("held()=" + std::to_string(f.held()) + " expected()=" + std::to_string(f.expected()) +
                  " right after a complete frame (nothing incomplete is held)");
        }
        continue;
      }
      if (n.status == TpktFramer::kNeedMore) {
        if (!in.empty()) problem("kNeedMore left " + std::to_string(in.size()) + " input bytes unconsumed");
        if (f.expected() != 0 && (f.expected() < kTpktMinLength || f.held() >= f.expected())) {
          problem("kNeedMore with held()=" + std::to_string(f.held()) + " expected()=" + std::to_string(f.expected()));
        }
        break;
      }
      // kError: report it, check that it sticks, and keep what was not consumed.
      r.failed = true;
      r.error = n.error;
      if (n.error == FramerError::kNone) problem("kError with error kNone");
      if (f.error() != n.error || !f.failed()) problem("failed()/error() disagree with the kError result");
      if (in.size() > before) problem("kError grew the input");
      const Bytes hb = f.held_bytes();
      r.leftover.assign(hb.begin(), hb.end());
      r.leftover.insert(r.leftover.end(), in.begin(), in.end());
      for (std::size_t cj = ci + 1; cj < chunks.size(); ++cj) r.leftover.insert(r.leftover.end(), chunks[cj].begin(), chunks[cj].end());
      Bytes again = in;
      const auto n2 = f.next(again);
      if (n2.status != TpktFramer::kError || n2.error != n.error || again.size() != in.size()) {
        problem("the framer did not stay failed after " + std::string(framer_error_name(n.error)));
      }
      if (!chunks.empty()) {
        Bytes more(chunks.back());
        if (f.next(more).status != TpktFramer::kError) problem("the framer accepted bytes after an error");
      }
      return r;
    }
  }
  r.held = f.held();
  r.expected = f.expected();
  const Bytes hb = f.held_bytes();
  if (hb.size() != r.held) problem("held_bytes().size() != held()");
  r.leftover.assign(hb.begin(), hb.end());
  return r;
}

// ---------------------------------------------------------------------------
// Expectation parsing helpers

std::optional<std::uint64_t> parse_number(const std::string& s) {
  if (s.empty()) return std::nullopt;
  std::size_t used = 0;
  try {
    std::uint64_t v = 0;
    if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
      v = std::stoull(s.substr(2), &used, 16);
      used += 2;
    } else {
      if (!std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
      v = std::stoull(s, &used, 10);
    }
    if (used != s.size()) return std::nullopt;
    return v;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

bool all_hex(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  });
}

// TSAP values: "quoted" is ASCII; unquoted all-hex of even length is hex
// bytes; anything else unquoted is ASCII.
ByteVec parse_tsap_value(const std::string& v) {
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') return ByteVec(v.begin() + 1, v.end() - 1);
  if (all_hex(v) && v.size() % 2 == 0) return *parse_hex(v);
  return ByteVec(v.begin(), v.end());
}

std::optional<std::uint64_t> number_word(const std::string& w) {
  static const std::map<std::string, std::uint64_t> words = {
      {"one", 1}, {"two", 2}, {"three", 3}, {"four", 4}, {"five", 5}};
  if (auto it = words.find(w); it != words.end()) return it->second;
  return parse_number(w);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool starts_with_word(const std::string& s, const std::string& word) {
  if (s.rfind(word, 0) != 0) return false;
  if (s.size() == word.size()) return true;
  const char next = s[word.size()];
  return next == ' ' || next == ';' || next == ':' || next == ',';
}

std::optional<TpduType> type_from_nibble(std::uint8_t n) {
  switch (n) {
    case 0x1: case 0x2: case 0x5: case 0x6: case 0x7:
    case 0x8: case 0xC: case 0xD: case 0xE: case 0xF:
      return static_cast<TpduType>(n);
    default:
      return std::nullopt;
  }
}

// Decode errors raised before the type is known: a row whose kind is "?".
bool error_before_type(DecodeErrorKind k) {
  switch (k) {
    case DecodeErrorKind::kEmpty: case DecodeErrorKind::kLiZero: case DecodeErrorKind::kLiReserved:
    case DecodeErrorKind::kLiOverrun: case DecodeErrorKind::kUnknownType: case DecodeErrorKind::kFramer:
      return true;
    default:
      return false;
  }
}

bool has_anomaly(const std::vector<Anomaly>& list, AnomalyKind k) {
  return std::any_of(list.begin(), list.end(), [k](const Anomaly& a) { return a.kind == k; });
}

std::string anomaly_list(const std::vector<Anomaly>& list) {
  std::string s;
  for (const Anomaly& a : list) s += (s.empty() ? "" : ", ") + std::string(anomaly_name(a.kind));
  return s.empty() ? "none" : s;
}

ByteVec wrap_tpkt(const ByteVec& tpdu, std::uint8_t reserved = 0) {
  const std::size_t len = tpdu.size() + kTpktHeaderSize;
  ByteVec out;
  out.reserve(len);
  out.push_back(kTpktVersion);
  out.push_back(reserved);
  out.push_back(static_cast<std::uint8_t>(len >> 8));
  out.push_back(static_cast<std::uint8_t>(len & 0xFF));
  out.insert(out.end(), tpdu.begin(), tpdu.end());
  return out;
}

// Another row, framed whole and decoded (for cross-row phrases such as "fix: V2").
struct DecodedRow {
  std::vector<ByteVec> frames;
  std::vector<Frame> decoded;  // only if every frame decodes
  bool ok = false;
};
DecodedRow decode_row(const Vector& v) {
  DecodedRow d;
  ByteVec all = v.bytes();
  if (v.cotp_only()) all = wrap_tpkt(all);
  FeedResult fr = run_framer({all});
  d.frames = std::move(fr.frames);
  if (fr.failed || fr.held != 0 || d.frames.empty()) return d;
  for (const ByteVec& f : d.frames) {
    auto r = decode_frame(Bytes(f));
    if (!r) return d;
    d.decoded.push_back(std::move(*r));
  }
  d.ok = true;
  return d;
}

// ---------------------------------------------------------------------------
// One row, checked. Returns the problems found (empty = the row holds).

enum class Verdict { kAccept, kReject, kNeedMore, kStrictReject };

class RowChecker {
 public:
  RowChecker(const Vector& row, const std::vector<Vector>& all) : row_(row), all_(all) {}

  std::vector<std::string> run() {
    observe();
    if (!parse_verdict()) return problems_;
    check_verdict();
    check_kind();
    check_keys();
    check_phrases();
    return problems_;
  }
  std::size_t checks() const { return checks_; }

 private:
  // -- bookkeeping ----------------------------------------------------------
  bool check(bool ok, const std::string& what) {
    ++checks_;
    if (!ok) problems_.push_back(row_.id + ": " + what);
    return ok;
  }
  void fail(const std::string& what) { check(false, what); }

  // -- observation ----------------------------------------------------------
  void observe() {
    segments_ = row_.segments;
    if (row_.cotp_only()) {
      // A bare TPDU: decode it directly, and also wrap it in a TPKT for the framer path.
      const ByteVec tpdu = row_.bytes();
      // The TPKT header goes in front of the first read; later reads stay as recorded.
      segments_.front() = wrap_tpkt(segments_.front(), 0);
      const std::size_t len = tpdu.size() + kTpktHeaderSize;
      segments_.front()[2] = static_cast<std::uint8_t>(len >> 8);
      segments_.front()[3] = static_cast<std::uint8_t>(len & 0xFF);
      direct_bytes_ = tpdu;
      direct_relay_.emplace(decode_tpdu(Bytes(direct_bytes_), DecodeOptions{}, &direct_anomalies_));
      direct_strict_.emplace(decode_tpdu(Bytes(direct_bytes_), DecodeOptions{true}, nullptr));
    }
    stream_ = concat(segments_);

    // The reference feed is the stream as recorded; every other feed must agree with it.
    const auto feeds = feeds_for(segments_);
    ref_ = run_framer(feeds.front().chunks);
    for (const auto& p : ref_.problems) fail("[" + feeds.front().name + "] " + p);
    for (std::size_t i = 1; i < feeds.size(); ++i) {
      const Feed& feed = feeds[i];
      const FeedResult r = run_framer(feed.chunks);
      const std::string tag = "[" + feed.name + ", " + std::to_string(feed.chunks.size()) + " reads] ";
      for (const auto& p : r.problems) fail(tag + p);
      check(r.frames == ref_.frames, tag + "frames differ from the recorded feed (" + std::to_string(r.frames.size()) +
                                         " vs " + std::to_string(ref_.frames.size()) + ")");
      check(r.failed == ref_.failed && r.error == ref_.error,
            tag + "framer outcome differs: " + std::string(framer_error_name(r.error)) + " vs " +
                std::string(framer_error_name(ref_.error)));
      check(r.leftover == ref_.leftover, tag + "unconsumed bytes differ: " + hex(r.leftover) + " vs " + hex(ref_.leftover));
      if (!r.failed && !ref_.failed) {
        check(r.held == ref_.held && r.expected == ref_.expected,
              tag + "held()/expected() differ: " + std::to_string(r.held) + "/" + std::to_string(r.expected) + " vs " +
                  std::to_string(ref_.held) + "/" + std::to_string(ref_.expected));
      }
    }
    // Conservation: frames + leftover are exactly the stream.
    ByteVec back = concat(ref_.frames);
    back.insert(back.end(), ref_.leftover.begin(), ref_.leftover.end());
    check(back == stream_, "frames plus unconsumed bytes are not the stream");

    for (const ByteVec& f : ref_.frames) {
      relay_.push_back(decode_frame(Bytes(f), DecodeOptions{}));
      strict_.push_back(decode_frame(Bytes(f), DecodeOptions{true}));
    }
  }

  // -- verdict --------------------------------------------------------------
  bool parse_verdict() {
    const std::string& e = row_.expectation;
    if (e.rfind("reject in strict mode", 0) == 0) {
      verdict_ = Verdict::kStrictReject;
      return check(e.find("tolerate+count in relay mode") != std::string::npos,
                   "\"reject in strict mode\" without \"tolerate+count in relay mode\": relay behaviour unspecified");
    }
    if (starts_with_word(e, "accept")) verdict_ = Verdict::kAccept;
    else if (starts_with_word(e, "reject")) verdict_ = Verdict::kReject;
    else if (starts_with_word(e, "need-more")) verdict_ = Verdict::kNeedMore;
    else if (!row_.kinds().empty()) verdict_ = Verdict::kAccept;  // N5/N6 style: TPDUs named, no verdict word
    else return check(false, "no verdict (accept / reject / need-more) and kind \"?\"");
    return true;
  }

  void check_verdict() {
    switch (verdict_) {
      case Verdict::kAccept: check_accept(); break;
      case Verdict::kReject: check_reject(); break;
      case Verdict::kNeedMore: check_need_more(); break;
      case Verdict::kStrictReject: check_strict_reject(); break;
    }
  }

  void check_frames_decoded(bool strict_too) {
    check(!ref_.failed, "framer error " + std::string(framer_error_name(ref_.error)));
    check(ref_.held == 0, std::to_string(ref_.held) + " bytes of an incomplete frame left over");
    check(!ref_.frames.empty(), "no frame came out");
    for (std::size_t i = 0; i < relay_.size(); ++i) {
      const std::string n = "frame " + std::to_string(i) + ": ";
      if (!check(relay_[i].ok(), n + "decode failed: " + (relay_[i] ? "" : relay_[i].error().detail))) continue;
      decoded_.push_back(&*relay_[i]);
      if (strict_too) {
        check(strict_[i].ok(), n + "strict decode failed: " + (strict_[i] ? "" : strict_[i].error().detail));
      }
      check_frame_invariants(*relay_[i], n);
    }
  }

  void check_frame_invariants(const Frame& f, const std::string& n) {
    check(f.header.version == kTpktVersion && f.header.length == f.raw.size(), n + "header does not match the frame");
    check(has_anomaly(f.anomalies, AnomalyKind::kReservedNonZero) == (f.header.reserved != 0),
          n + "reserved-nonzero anomaly does not match reserved byte " + std::to_string(f.header.reserved));
    // Re-encoding an unedited decode is byte-exact.
    const OwnedTpdu o = OwnedTpdu::from(f.tpdu);
    auto enc = encode_frame(f.header.reserved, o);
    if (check(enc.ok(), n + "encode_frame failed: " + (enc ? "" : enc.error().message))) {
      check(*enc == ByteVec(f.raw.begin(), f.raw.end()), n + "re-encoding is not byte-exact: " + hex(*enc) + " vs " + hex(f.raw));
    }
  }

  void check_direct(bool expect_relay_ok, bool expect_strict_ok) {
    if (!row_.cotp_only()) return;
    check(direct_relay_->ok() == expect_relay_ok,
          std::string("direct decode_tpdu ") + (direct_relay_->ok() ? "accepted" : "rejected (" + direct_relay_->error().detail + ")"));
    check(direct_strict_->ok() == expect_strict_ok,
          std::string("direct strict decode_tpdu ") + (direct_strict_->ok() ? "accepted" : "rejected (" + direct_strict_->error().detail + ")"));
    // The direct and the wrapped decode must agree.
    if (relay_.size() == 1) {
      check(direct_relay_->ok() == relay_[0].ok(), "direct and TPKT-wrapped decodes disagree");
      if (direct_relay_->ok() && relay_[0].ok()) {
        const Tpdu& t = **direct_relay_;
        check(t.type == relay_[0]->tpdu.type && t.li == relay_[0]->tpdu.li &&
                  t.params.size() == relay_[0]->tpdu.params.size() &&
                  ByteVec(t.user_data.begin(), t.user_data.end()) ==
                      ByteVec(relay_[0]->tpdu.user_data.begin(), relay_[0]->tpdu.user_data.end()),
              "direct and TPKT-wrapped decodes differ");
        check(anomaly_list(direct_anomalies_) == anomaly_list(relay_[0]->anomalies),
              "direct anomalies (" + anomaly_list(direct_anomalies_) + ") differ from wrapped (" +
                  anomaly_list(relay_[0]->anomalies) + ")");
        auto enc = OwnedTpdu::from(t).encode();
        check(enc.ok() && *enc == direct_bytes_, "direct re-encode is not byte-exact");
      }
      if (!direct_relay_->ok() && !relay_[0].ok()) {
        check(direct_relay_->error().kind == relay_[0].error().kind, "direct and wrapped decode errors differ");
      }
    }
  }

  void check_accept() {
    check_frames_decoded(true);
    check_direct(true, true);
  }

  void check_strict_reject() {
    check_frames_decoded(false);
    bool strict_rejected = false;
    for (std::size_t i = 0; i < strict_.size(); ++i) {
      if (!strict_[i].ok()) {
        strict_rejected = true;
        check(strict_[i].error().kind == DecodeErrorKind::kTpduNrNonZero,
              "strict mode rejected with " + std::string(decode_error_name(strict_[i].error().kind)) + ", not tpdu-nr-nonzero");
      }
    }
    check(strict_rejected, "strict mode accepted every frame");
    for (const Frame* f : decoded_) {
      check(has_anomaly(f->anomalies, AnomalyKind::kTpduNrNonZero),
            "relay mode did not count tpdu-nr-nonzero (anomalies: " + anomaly_list(f->anomalies) + ")");
    }
    if (row_.cotp_only()) {
      check_direct(true, false);
      if (!direct_strict_->ok()) {
        check(direct_strict_->error().kind == DecodeErrorKind::kTpduNrNonZero, "direct strict decode: wrong error kind");
      }
      check(has_anomaly(direct_anomalies_, AnomalyKind::kTpduNrNonZero), "direct relay decode did not count tpdu-nr-nonzero");
    }
  }

  void check_reject() {
    bool decode_failed = false;
    for (const auto& r : relay_) decode_failed = decode_failed || !r.ok();
    check(ref_.failed || decode_failed, "neither the framer nor decode_frame rejected it");
    check_direct(false, false);
  }

  void check_need_more() {
    check(!ref_.failed, "framer error " + std::string(framer_error_name(ref_.error)));
    const std::size_t framed = concat(ref_.frames).size();
    check(ref_.held == stream_.size() - framed,
          "held() = " + std::to_string(ref_.held) + ", expected the " + std::to_string(stream_.size() - framed) + " bytes fed");
    check(ref_.held > 0, "need-more with nothing held");
  }

  // -- kind column ----------------------------------------------------------
  void check_kind() {
    const auto kinds = row_.kinds();
    for (const auto& k : kinds) {
      bool known = false;
      for (std::uint8_t n = 0; n < 16; ++n) {
        if (auto t = type_from_nibble(n); t && tpdu_type_name(*t) == k) known = true;
      }
      check(known, "kind column names an unknown TPDU type \"" + k + "\"");
    }
    if (verdict_ == Verdict::kAccept || verdict_ == Verdict::kStrictReject) {
      std::vector<std::string> got;
      for (const Frame* f : decoded_) got.emplace_back(tpdu_type_name(f->tpdu.type));
      std::string got_s;
      for (const auto& g : got) got_s += (got_s.empty() ? "" : "+") + g;
      check(got == kinds, "kind column says " + row_.kind + ", decoded " + (got_s.empty() ? "?" : got_s));
      return;
    }
    if (verdict_ == Verdict::kNeedMore) {
      // Complete frames before the incomplete one would be named; "?" = none.
      check(ref_.frames.size() == kinds.size(), "kind column says " + row_.kind + " but " +
                                                    std::to_string(ref_.frames.size()) + " frame(s) came out");
      return;
    }
    // Reject. "?": no TPDU type was ever established (framer error, or a
    // decode error raised before the type). Otherwise the rejected frame's
    // type nibble names the kind, and the error came after the type was known.
    if (kinds.empty()) {
      for (const auto& r : relay_) {
        check(!r.ok(), "kind \"?\" but a frame decoded as " + (r ? std::string(tpdu_type_name(r->tpdu.type)) : ""));
        if (!r.ok()) {
          check(error_before_type(r.error().kind), "kind \"?\" but the decoder knew the type before rejecting (" +
                                                       std::string(decode_error_name(r.error().kind)) + ")");
        }
      }
      return;
    }
    check(ref_.frames.size() == kinds.size(), "kind column says " + row_.kind + " but " +
                                                  std::to_string(ref_.frames.size()) + " frame(s) came out");
    for (std::size_t i = 0; i < ref_.frames.size() && i < kinds.size(); ++i) {
      const ByteVec& f = ref_.frames[i];
      if (!check(f.size() > 5, "frame too short to carry a type")) continue;
      const auto t = type_from_nibble(f[5] >> 4);
      check(t && tpdu_type_name(*t) == kinds[i], "kind column says " + kinds[i] + ", the type nibble says " +
                                                     (t ? std::string(tpdu_type_name(*t)) : "unknown"));
      if (!relay_[i].ok()) {
        check(!error_before_type(relay_[i].error().kind),
              "kind " + kinds[i] + " but rejected before the type was known (" +
                  std::string(decode_error_name(relay_[i].error().kind)) + ")");
      }
    }
  }

  // -- key=value tokens -----------------------------------------------------
  // Each check applies to every decoded frame of the row.
  void each_decoded(const std::string& what, const std::function<void(const Frame&)>& fn) {
    if (!check(!decoded_.empty(), what + ": no decoded frame to check it against")) return;
    for (const Frame* f : decoded_) fn(*f);
  }

  // The LI octet of every framed TPKT, decoded or not.
  std::vector<std::uint8_t> raw_lis() const {
    std::vector<std::uint8_t> lis;
    for (const ByteVec& f : ref_.frames) {
      if (f.size() > kTpktHeaderSize) lis.push_back(f[kTpktHeaderSize]);
    }
    if (ref_.frames.empty() && stream_.size() > kTpktHeaderSize) lis.push_back(stream_[kTpktHeaderSize]);
    return lis;
  }

  void check_number_field(const std::string& key, std::uint64_t want, const std::function<std::optional<std::uint64_t>(const Frame&)>& get) {
    each_decoded(key, [&](const Frame& f) {
      const auto got = get(f);
      check(got.has_value(), key + "=" + std::to_string(want) + ": the " + std::string(tpdu_type_name(f.tpdu.type)) +
                                 " has no such field");
      if (got) check(*got == want, key + ": expected " + std::to_string(want) + ", decoded " + std::to_string(*got));
    });
  }

  void check_tsap(const std::string& key, const ByteVec& want, bool calling) {
    each_decoded(key, [&](const Frame& f) {
      const auto got = calling ? f.tpdu.calling_tsap() : f.tpdu.called_tsap();
      if (!check(got.has_value(), key + ": no such TSAP in the " + std::string(tpdu_type_name(f.tpdu.type)))) return;
      check(ByteVec(got->begin(), got->end()) == want, key + ": expected " + hex(want) + ", decoded " + hex(*got));
    });
  }

  void check_keys() {
    static const std::regex kv(R"re((^|[\s(;,])([A-Za-z][A-Za-z0-9_-]*)=("[^"]*"|[^\s,;()"]+))re");
    const std::string& e = row_.expectation;
    std::vector<std::pair<std::size_t, std::size_t>> covered;
    for (auto it = std::sregex_iterator(e.begin(), e.end(), kv); it != std::sregex_iterator(); ++it) {
      const std::smatch& m = *it;
      covered.emplace_back(static_cast<std::size_t>(m.position(2)), static_cast<std::size_t>(m.position(3) + m.length(3)));
      apply_key(m.str(2), m.str(3));
    }
    // An '=' glued to a word that is not part of a key=value token above is a
    // malformed token ("foo=", "a=(b)"): refuse rather than ignore it.
    for (std::size_t i = 1; i < e.size(); ++i) {
      if (e[i] != '=' || e[i - 1] == ' ') continue;
      const bool ok = std::any_of(covered.begin(), covered.end(), [i](const auto& r) { return i >= r.first && i < r.second; });
      check(ok, "malformed key=value token near \"" + e.substr(i > 10 ? i - 10 : 0, 20) + "\"");
    }
  }

  void apply_key(const std::string& key_as_written, const std::string& value) {
    const std::string key = lower(key_as_written);
    const std::string kv = key_as_written + "=" + value;
    auto number = [&]() -> std::optional<std::uint64_t> {
      auto n = parse_number(value);
      check(n.has_value(), kv + ": value is not a number (0x-hex or decimal)");
      return n;
    };
    if (key == "calling" || key == "called") {
      check_tsap(kv, parse_tsap_value(value), key == "calling");
    } else if (key == "reserved") {
      auto n = number();
      if (!n) return;
      check(!row_.cotp_only(), kv + ": a cotp-only row has no TPKT header");
      each_decoded(kv, [&](const Frame& f) {
        check(f.header.reserved == *n, kv + ": decoded reserved " + std::to_string(f.header.reserved));
      });
    } else if (key == "tpdu_size") {
      auto n = number();
      if (!n) return;
      check_number_field(kv, *n, [](const Frame& f) -> std::optional<std::uint64_t> {
        const auto code = f.tpdu.tpdu_size_code();
        if (!code) return std::nullopt;
        const auto octets = tpdu_size_octets(*code);
        return octets ? std::optional<std::uint64_t>(*octets) : std::nullopt;
      });
    } else if (key == "dst_ref") {
      if (auto n = number()) check_number_field(kv, *n, [](const Frame& f) -> std::optional<std::uint64_t> {
        return f.tpdu.dst_ref ? std::optional<std::uint64_t>(*f.tpdu.dst_ref) : std::nullopt; });
    } else if (key == "src_ref") {
      if (auto n = number()) check_number_field(kv, *n, [](const Frame& f) -> std::optional<std::uint64_t> {
        return f.tpdu.src_ref ? std::optional<std::uint64_t>(*f.tpdu.src_ref) : std::nullopt; });
    } else if (key == "class") {
      if (auto n = number()) check_number_field(kv, *n, [](const Frame& f) -> std::optional<std::uint64_t> {
        const auto c = f.tpdu.preferred_class();
        return c ? std::optional<std::uint64_t>(*c) : std::nullopt; });
    } else if (key == "cause") {
      if (auto n = number()) check_number_field(kv, *n, [](const Frame& f) -> std::optional<std::uint64_t> {
        return f.tpdu.cause ? std::optional<std::uint64_t>(*f.tpdu.cause) : std::nullopt; });
    } else if (key == "reason") {
      if (auto n = number()) check_number_field(kv, *n, [](const Frame& f) -> std::optional<std::uint64_t> {
        return f.tpdu.reason ? std::optional<std::uint64_t>(*f.tpdu.reason) : std::nullopt; });
    } else if (key == "tpdu-nr") {
      if (auto n = number()) check_number_field(kv, *n, [](const Frame& f) -> std::optional<std::uint64_t> {
        return f.tpdu.nr ? std::optional<std::uint64_t>(*f.tpdu.nr) : std::nullopt; });
    } else if (key == "eot") {
      auto n = number();
      if (!n) return;
      check(*n <= 1, kv + ": EOT is 0 or 1");
      check_number_field(kv, *n, [](const Frame& f) -> std::optional<std::uint64_t> {
        return f.tpdu.eot ? std::optional<std::uint64_t>(*f.tpdu.eot ? 1 : 0) : std::nullopt; });
    } else if (key == "li") {
      auto n = number();
      if (!n) return;
      const auto lis = raw_lis();
      check(!lis.empty(), kv + ": no TPDU octets");
      for (std::uint8_t li : lis) check(li == *n, kv + ": LI octet is " + std::to_string(li));
    } else if (key == "invalid-tpdu") {
      check(all_hex(value) && value.size() % 2 == 0, kv + ": value must be hex");
      const ByteVec want = all_hex(value) && value.size() % 2 == 0 ? *parse_hex(value) : ByteVec{};
      each_decoded(kv, [&](const Frame& f) {
        check(f.tpdu.type == TpduType::kER, kv + ": not an ER");
        const Param* p = f.tpdu.find(param::kInvalidTpdu);
        if (!check(p != nullptr, kv + ": no 0xC1 parameter")) return;
        check(ByteVec(p->value.begin(), p->value.end()) == want, kv + ": decoded " + hex(p->value));
      });
    } else {
      fail("unrecognised key=value token \"" + kv +
           "\": teach tests/unit/codec/vectors_test.cpp (RowChecker::apply_key) what it means");
    }
  }

  // -- phrases --------------------------------------------------------------
  // The clause (between ';') that contains position `pos`.
  std::string clause_at(std::size_t pos) const {
    const std::string& e = row_.expectation;
    const std::size_t start = e.rfind(';', pos);
    const std::size_t end = e.find(';', pos);
    return e.substr(start == std::string::npos ? 0 : start + 1,
                    end == std::string::npos ? std::string::npos : end - (start == std::string::npos ? 0 : start + 1));
  }

  void each_phrase(const char* pattern, const std::function<void(const std::smatch&)>& fn) {
    const std::regex re(pattern);
    const std::string& e = row_.expectation;
    for (auto it = std::sregex_iterator(e.begin(), e.end(), re); it != std::sregex_iterator(); ++it) fn(*it);
  }

  // Repairs the reserved byte of every frame of `frames`, as the relay does.
  static ByteVec repaired(const std::vector<ByteVec>& frames) {
    ByteVec out;
    for (ByteVec f : frames) {
      set_reserved(MutableBytes(f), 0);
      out.insert(out.end(), f.begin(), f.end());
    }
    return out;
  }

  const Vector* other_row(const std::string& id) {
    for (const Vector& v : all_) {
      if (v.id == id) return &v;
    }
    fail("refers to row " + id + ", which the file does not have");
    return nullptr;
  }

  void check_phrases() {
    // "fix: V2": the reserved-byte repair of this row must be row V2, byte for byte.
    each_phrase(R"(fix: ([A-Za-z0-9]+))", [&](const std::smatch& m) {
      const Vector* other = other_row(m.str(1));
      if (!other) return;
      check(!ref_.frames.empty(), "fix: no frame to repair");
      const ByteVec fixed = repaired(ref_.frames);
      check(fixed == other->bytes(), "fix: set_reserved(frame, 0) gives " + hex(fixed) + ", row " + other->id + " is " +
                                         hex(other->bytes()));
      check(fixed.size() == stream_.size(), "fix: the repair changed the length");
      std::size_t changed = 0;
      for (std::size_t i = 0; i < fixed.size() && i < stream_.size(); ++i) changed += fixed[i] != stream_[i];
      check(changed == static_cast<std::size_t>(std::count_if(ref_.frames.begin(), ref_.frames.end(), [](const ByteVec& f) { return f[1] != 0; })),
            "fix: the repair changed more than the reserved bytes");
    });
    // "V1 repaired": this row is the repair of row V1.
    each_phrase(R"(([A-Za-z0-9]+) repaired)", [&](const std::smatch& m) {
      const Vector* other = other_row(m.str(1));
      if (!other) return;
      const DecodedRow d = decode_row(*other);
      check(!d.frames.empty(), "repaired: row " + other->id + " gives no frame");
      check(repaired(d.frames) == stream_, "repaired: set_reserved(row " + other->id + ", 0) is not this row");
    });
    // "relay untouched": the repair leaves it as it is.
    each_phrase(R"(relay untouched)", [&](const std::smatch&) {
      check(!ref_.frames.empty() && repaired(ref_.frames) == stream_, "relay untouched: the reserved repair changes it");
    });
    each_phrase(R"(same length (\d+))", [&](const std::smatch& m) {
      const auto n = *parse_number(m.str(1));
      check(stream_.size() == n, "same length " + m.str(1) + ": the row has " + std::to_string(stream_.size()) + " bytes");
      each_decoded("same length", [&](const Frame& f) { check(f.header.length == n, "same length: TPKT length " + std::to_string(f.header.length)); });
    });
    each_phrase(R"(smallest valid TPKT)", [&](const std::smatch&) {
      check(ref_.frames.size() == 1 && ref_.frames[0].size() == kTpktMinLength, "smallest valid TPKT: not one 7-byte frame");
      check(!decoded_.empty(), "smallest valid TPKT: not decoded");
    });
    // "one 9-byte DT"
    each_phrase(R"(\b(one|two|three|\d+) (\d+)-byte ([A-Z]{2})\b)", [&](const std::smatch& m) {
      const auto count = number_word(m.str(1));
      const auto size = parse_number(m.str(2));
      check(ref_.frames.size() == count && decoded_.size() == count,
            m.str(0) + ": " + std::to_string(ref_.frames.size()) + " frames, " + std::to_string(decoded_.size()) + " decoded");
      for (const Frame* f : decoded_) {
        check(f->raw.size() == size, m.str(0) + ": frame of " + std::to_string(f->raw.size()) + " bytes");
        check(tpdu_type_name(f->tpdu.type) == m.str(3), m.str(0) + ": decoded " + std::string(tpdu_type_name(f->tpdu.type)));
      }
    });
    // "two frames"
    each_phrase(R"(\b(one|two|three|four|\d+) frames?\b)", [&](const std::smatch& m) {
      const auto n = number_word(m.str(1));
      check(ref_.frames.size() == n, m.str(0) + ": " + std::to_string(ref_.frames.size()) + " frames came out");
    });
    // "in one read", "across two reads"
    each_phrase(R"(\b(?:in|across) (one|two|three|\d+) reads?\b)", [&](const std::smatch& m) {
      const auto n = number_word(m.str(1));
      check(row_.segments.size() == n, m.str(0) + ": the hex column has " + std::to_string(row_.segments.size()) + " reads");
    });
    each_phrase(R"(header split across)", [&](const std::smatch&) {
      check(row_.segments.size() > 1 && row_.segments[0].size() < kTpktHeaderSize,
            "header split: the first read is not a partial TPKT header");
    });
    // "reason 0x80 normal disconnect", "reason 200 (undefined) kept as unknown"
    each_phrase(R"(\breason (0x[0-9A-Fa-f]+|\d+)([^;]*))", [&](const std::smatch& m) {
      const auto n = parse_number(m.str(1));
      const std::string rest = m.str(2);
      const bool unknown = clause_at(static_cast<std::size_t>(m.position(0))).find("unknown") != std::string::npos;
      each_decoded(m.str(0), [&](const Frame& f) {
        if (!check(f.tpdu.type == TpduType::kDR && f.tpdu.reason.has_value(), "reason: not a DR")) return;
        check(*f.tpdu.reason == *n, "reason: decoded " + std::to_string(*f.tpdu.reason));
        const auto name = dr_reason_name(*f.tpdu.reason);
        if (unknown) {
          check(!name.has_value(), "reason " + m.str(1) + " should be unknown, dr_reason_name gives \"" + std::string(name.value_or("")) + "\"");
          check(has_anomaly(f.anomalies, AnomalyKind::kDrReasonUnknown), "reason " + m.str(1) + ": no dr-reason-unknown anomaly");
        } else {
          check(name.has_value(), "reason " + m.str(1) + " should be named, dr_reason_name gives nullopt");
          // Plain words after the number ("normal disconnect") must be in the name.
          static const std::regex words(R"(^\s*([a-z][a-z ]*[a-z])\s*$)");
          std::smatch w;
          if (name && std::regex_match(rest, w, words)) {
            check(lower(std::string(*name)).find(w.str(1)) != std::string::npos,
                  "reason " + m.str(1) + ": name \"" + std::string(*name) + "\" does not say \"" + w.str(1) + "\"");
          }
        }
      });
    });
    // "cause 1"
    each_phrase(R"(\bcause (0x[0-9A-Fa-f]+|\d+))", [&](const std::smatch& m) {
      const auto n = parse_number(m.str(1));
      const bool unknown = clause_at(static_cast<std::size_t>(m.position(0))).find("unknown") != std::string::npos;
      each_decoded(m.str(0), [&](const Frame& f) {
        if (!check(f.tpdu.type == TpduType::kER && f.tpdu.cause.has_value(), "cause: not an ER")) return;
        check(*f.tpdu.cause == *n, "cause: decoded " + std::to_string(*f.tpdu.cause));
        check(er_cause_name(*f.tpdu.cause).has_value() != unknown, "cause " + m.str(1) + ": er_cause_name disagrees");
      });
    });
    // "user data 010203"
    each_phrase(R"(\buser data ([0-9A-Fa-f]+)\b)", [&](const std::smatch& m) {
      const auto want = parse_hex(m.str(1));
      if (!check(want.ok(), m.str(0) + ": bad hex")) return;
      each_decoded(m.str(0), [&](const Frame& f) {
        check(ByteVec(f.tpdu.user_data.begin(), f.tpdu.user_data.end()) == *want, "user data: decoded " + hex(f.tpdu.user_data));
      });
    });
    // "alternative classes 0,1,3"
    each_phrase(R"(\balternative classes (\d+(?:\s*,\s*\d+)*))", [&](const std::smatch& m) {
      std::vector<unsigned> want;
      std::stringstream ss(m.str(1));
      for (std::string item; std::getline(ss, item, ',');) want.push_back(static_cast<unsigned>(std::stoul(item)));
      each_decoded(m.str(0), [&](const Frame& f) {
        const Param* p = f.tpdu.find(param::kAlternativeClasses);
        if (!check(p != nullptr, "alternative classes: no 0xC7 parameter")) return;
        std::vector<unsigned> got;
        for (std::uint8_t b : p->value) {
          got.push_back(b >> 4);
          check((b & 0x0F) == 0, "alternative classes: low nibble set in " + hex(p->value));
        }
        check(got == want, "alternative classes: decoded " + hex(p->value));
      });
    });
    // "unknown param 0xAB skipped"
    each_phrase(R"(\bunknown param(?:eter)? 0x([0-9A-Fa-f]{2}) skipped)", [&](const std::smatch& m) {
      const auto code = static_cast<std::uint8_t>(*parse_number("0x" + m.str(1)));
      each_decoded(m.str(0), [&](const Frame& f) {
        check(f.tpdu.find(code) != nullptr, m.str(0) + ": the parameter is not kept");
        check(param_name(f.tpdu.type, code).empty(), m.str(0) + ": param_name knows it");
        const bool flagged = std::any_of(f.anomalies.begin(), f.anomalies.end(), [&](const Anomaly& a) {
          return a.kind == AnomalyKind::kParamUnknown && a.detail.find("0x" + hex(Bytes(&code, 1))) != std::string::npos;
        });
        check(flagged, m.str(0) + ": no param-unknown anomaly naming it (anomalies: " + anomaly_list(f.anomalies) + ")");
        // Skipped, not the end of parsing: every octet up to LI is accounted for.
        std::size_t end = 1 + f.tpdu.fixed_length();
        for (const Param& p : f.tpdu.params) end = std::max(end, p.offset + 2 + p.value.size());
        check(end == std::size_t{f.tpdu.li} + 1, m.str(0) + ": parameters after it were not decoded");
      });
    });
    // "class 5 flagged as anomaly"
    each_phrase(R"(\bclass (\d+) flagged as anomaly)", [&](const std::smatch& m) {
      const auto n = parse_number(m.str(1));
      each_decoded(m.str(0), [&](const Frame& f) {
        check(f.tpdu.preferred_class() == n, m.str(0) + ": decoded class " + std::to_string(f.tpdu.preferred_class().value_or(255)));
        const AnomalyKind k = *n > 4 ? AnomalyKind::kClassUndefined : AnomalyKind::kClassNotZero;
        check(*n != 0 && has_anomaly(f.anomalies, k), m.str(0) + ": no " + std::string(anomaly_name(k)) + " anomaly");
      });
    });
    // "parameter order C0 C2 C1"
    each_phrase(R"(\bparameter order((?: [0-9A-Fa-f]{2}\b)+))", [&](const std::smatch& m) {
      const auto want = parse_hex(m.str(1));
      each_decoded(m.str(0), [&](const Frame& f) {
        ByteVec got;
        for (const Param& p : f.tpdu.params) got.push_back(p.code);
        check(want.ok() && got == *want, m.str(0) + ": decoded order " + hex(got));
      });
    });
    // "echoes V7 TSAPs": both TSAPs equal to those of row V7, under the same codes.
    each_phrase(R"(\bechoes ([A-Za-z0-9]+) TSAPs)", [&](const std::smatch& m) {
      const Vector* other = other_row(m.str(1));
      if (!other) return;
      const DecodedRow d = decode_row(*other);
      if (!check(d.ok && d.decoded.size() == 1, m.str(0) + ": row " + other->id + " does not decode to one TPDU")) return;
      const auto oc = d.decoded[0].tpdu.calling_tsap();
      const auto od = d.decoded[0].tpdu.called_tsap();
      if (!check(oc && od, m.str(0) + ": row " + other->id + " lacks a TSAP")) return;
      check_tsap(m.str(0) + " (calling)", ByteVec(oc->begin(), oc->end()), true);
      check_tsap(m.str(0) + " (called)", ByteVec(od->begin(), od->end()), false);
    });
    // "(PG rack 0 slot 2)": S7 remote TSAP = connection type, rack*0x20+slot.
    each_phrase(R"(\b(PG|OP|S7-Basic) rack (\d+) slot (\d+))", [&](const std::smatch& m) {
      const std::uint8_t type = m.str(1) == "PG" ? 1 : m.str(1) == "OP" ? 2 : 3;
      const auto rack = *parse_number(m.str(2));
      const auto slot = *parse_number(m.str(3));
      check_tsap(m.str(0), ByteVec{type, static_cast<std::uint8_t>(rack * 0x20 + slot)}, false);
    });
    // "(hex)" / "(ASCII)" after TSAPs: how tsap_text must show them.
    each_phrase(R"(\((hex|ASCII)\))", [&](const std::smatch& m) {
      const bool ascii = m.str(1) == "ASCII";
      each_decoded(m.str(0), [&](const Frame& f) {
        for (const auto& t : {f.tpdu.calling_tsap(), f.tpdu.called_tsap()}) {
          if (!check(t.has_value(), m.str(0) + ": TSAP missing")) continue;
          const TsapText tt = tsap_text(*t);
          check(tt.printable == ascii, m.str(0) + ": tsap_text(" + hex(*t) + ").printable is " + (tt.printable ? "true" : "false"));
          check(tt.display() == (ascii ? std::string(t->begin(), t->end()) : "hex:" + hex(*t)),
                m.str(0) + ": tsap_text display \"" + tt.display() + "\"");
        }
      });
    });
    // Standalone "EOT" (not "non-EOT", not "EOT=0"): the DT ends its TSDU;
    // "no EOT" / "without EOT": it does not.
    each_phrase(R"((^|[^-\w])(no |without )?EOT($|[^=\w-]))", [&](const std::smatch& m) {
      const bool want = !m[2].matched;
      each_decoded(m.str(0), [&](const Frame& f) {
        check(f.tpdu.eot.has_value() && *f.tpdu.eot == want, m.str(0) + ": decoded " +
                                                                 (f.tpdu.eot ? (*f.tpdu.eot ? "with" : "without") : "no") + " EOT");
      });
    });
    each_phrase(R"(\bnon-EOT\b)", [&](const std::smatch& m) {
      each_decoded(m.str(0), [&](const Frame& f) { check(f.tpdu.eot.has_value() && !*f.tpdu.eot, "non-EOT: decoded with EOT"); });
    });
    // "empty non-EOT DT"
    each_phrase(R"(\bempty non-EOT DT\b)", [&](const std::smatch& m) {
      each_decoded(m.str(0), [&](const Frame& f) {
        check(f.tpdu.type == TpduType::kDT && f.tpdu.user_data.empty(), m.str(0) + ": not an empty DT");
        check(has_anomaly(f.anomalies, AnomalyKind::kEmptyNonEotDt), m.str(0) + ": no empty-non-eot-dt anomaly (anomalies: " +
                                                                        anomaly_list(f.anomalies) + ")");
      });
    });
    // "LI 9" (and "with LI 3"): the LI octet. "LI = 0": the same, and the decoder says li-zero.
    each_phrase(R"(\bLI (\d+))", [&](const std::smatch& m) {
      const auto n = parse_number(m.str(1));
      const auto lis = raw_lis();
      check(!lis.empty(), m.str(0) + ": no TPDU octets");
      for (std::uint8_t li : lis) check(li == *n, m.str(0) + ": LI octet is " + std::to_string(li));
    });
    each_phrase(R"(\bLI = (\d+))", [&](const std::smatch& m) {
      const auto n = parse_number(m.str(1));
      const auto lis = raw_lis();
      check(!lis.empty(), m.str(0) + ": no TPDU octets");
      for (std::uint8_t li : lis) check(li == *n, m.str(0) + ": LI octet is " + std::to_string(li));
      if (*n == 0) expect_decode_error(DecodeErrorKind::kLiZero, m.str(0));
    });
    // Reject reasons.
    each_phrase(R"(\bversion (\d+))", [&](const std::smatch& m) {
      const auto n = parse_number(m.str(1));
      check(!stream_.empty() && stream_[0] == *n, m.str(0) + ": the version octet is " + (stream_.empty() ? "absent" : std::to_string(stream_[0])));
      if (*n != kTpktVersion) expect_framer_error(FramerError::kBadVersion, m.str(0));
    });
    each_phrase(R"(\bTPKT length (\d+) < (\d+))", [&](const std::smatch& m) {
      const auto n = parse_number(m.str(1));
      check(*parse_number(m.str(2)) == kTpktMinLength, m.str(0) + ": the minimum is " + std::to_string(kTpktMinLength));
      check(stream_.size() >= 4 && ((stream_[2] << 8) | stream_[3]) == static_cast<int>(*n), m.str(0) + ": declared length differs");
      expect_framer_error(FramerError::kLengthTooShort, m.str(0));
    });
    each_phrase(R"(\bparameter ([0-9A-Fa-f]{2}) length (\d+) overruns LI)", [&](const std::smatch& m) {
      const auto code = *parse_number("0x" + m.str(1));
      const auto len = *parse_number(m.str(2));
      if (!expect_decode_error(DecodeErrorKind::kParamOverrun, m.str(0))) return;
      for (std::size_t i = 0; i < relay_.size(); ++i) {
        if (relay_[i].ok()) continue;
        const std::size_t at = kTpktHeaderSize + relay_[i].error().offset;
        const ByteVec& f = ref_.frames[i];
        check(at + 1 < f.size() && f[at] == code && f[at + 1] == len,
              m.str(0) + ": the error offset " + std::to_string(relay_[i].error().offset) + " does not point at it");
      }
    });
    each_phrase(R"(\b([A-Z]{2}) with LI (\d+) in class 0)", [&](const std::smatch& m) {
      expect_decode_error(DecodeErrorKind::kLiInvalid, m.str(0));
    });
    // need-more details
    each_phrase(R"(\bdeclared (\d+), (\d+) present)", [&](const std::smatch& m) {
      check(!ref_.failed && ref_.expected == *parse_number(m.str(1)), m.str(0) + ": expected() is " + std::to_string(ref_.expected));
      check(!ref_.failed && ref_.held == *parse_number(m.str(2)), m.str(0) + ": held() is " + std::to_string(ref_.held));
    });
    each_phrase(R"(\bheader incomplete)", [&](const std::smatch& m) {
      check(!ref_.failed && ref_.expected == 0 && ref_.held < kTpktHeaderSize && ref_.held == stream_.size(),
            m.str(0) + ": held()=" + std::to_string(ref_.held) + " expected()=" + std::to_string(ref_.expected));
    });
  }

  bool expect_framer_error(FramerError want, const std::string& what) {
    return check(ref_.failed && ref_.error == want, what + ": framer says " + std::string(framer_error_name(ref_.error)) +
                                                        ", expected " + std::string(framer_error_name(want)));
  }

  bool expect_decode_error(DecodeErrorKind want, const std::string& what) {
    bool seen = false;
    std::string got;
    for (const auto& r : relay_) {
      if (r.ok()) continue;
      got += std::string(got.empty() ? "" : ", ") + std::string(decode_error_name(r.error().kind));
      seen = seen || r.error().kind == want;
    }
    if (row_.cotp_only() && direct_relay_ && !direct_relay_->ok()) {
      check(direct_relay_->error().kind == want, what + ": direct decode_tpdu says " +
                                                     std::string(decode_error_name(direct_relay_->error().kind)));
    }
    return check(seen, what + ": decode errors [" + got + "], expected " + std::string(decode_error_name(want)));
  }

  const Vector& row_;
  const std::vector<Vector>& all_;
  std::vector<ByteVec> segments_;
  ByteVec stream_;
  ByteVec direct_bytes_;
  std::optional<isoproxy::Result<Tpdu, DecodeError>> direct_relay_, direct_strict_;
  std::vector<Anomaly> direct_anomalies_;
  FeedResult ref_;
  std::vector<isoproxy::Result<Frame, DecodeError>> relay_, strict_;
  std::vector<const Frame*> decoded_;
  Verdict verdict_ = Verdict::kAccept;
  std::vector<std::string> problems_;
  std::size_t checks_ = 0;
};

std::vector<std::string> check_row(const Vector& row, const std::vector<Vector>& all, std::size_t* checks = nullptr) {
  RowChecker c(row, all);
  auto problems = c.run();
  if (checks) *checks = c.checks();
  return problems;
}

Vector synthetic(std::string id, std::string kind, std::string direction, const std::string& hex_text,
                 std::string expectation) {
  Vector v;
  v.file = "synthetic";
  v.id = std::move(id);
  v.kind = std::move(kind);
  v.direction = std::move(direction);
  v.hex = hex_text;
  v.expectation = std::move(expectation);
  for (const auto& seg : isoproxy::test::detail::split(hex_text, '|')) v.segments.push_back(*parse_hex(seg));
  return v;
}

bool mentions(const std::vector<std::string>& problems, const std::string& what) {
  return std::any_of(problems.begin(), problems.end(), [&](const std::string& p) { return p.find(what) != std::string::npos; });
}

std::string joined(const std::vector<std::string>& problems) {
  std::string s;
  for (const auto& p : problems) s += "\n  " + p;
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------

TEST_CASE("frames.tsv: every row holds its expectation", "[vectors][codec]") {
  const auto rows = isoproxy::test::load_vectors();
  REQUIRE(rows.size() >= 30);
  for (const Vector& row : rows) {
    DYNAMIC_SECTION(row.id << " " << row.kind) {
      INFO(row.where() << "\n  hex:         " << row.hex << "\n  expectation: " << row.expectation
                       << "\n  random splits use std::mt19937 seeds 1 2 3 42 102 1006 2126 65535");
      std::size_t checks = 0;
      const auto problems = check_row(row, rows, &checks);
      for (const auto& p : problems) FAIL_CHECK(p);
      CHECK(problems.empty());
      CHECK(checks >= 5);  // the row was really looked at
    }
  }
}

TEST_CASE("frames.tsv: V17c strict and relay modes", "[vectors][codec]") {
  const auto rows = isoproxy::test::load_vectors();
  const ByteVec tpdu = isoproxy::test::find_vector(rows, "V17c").bytes();
  // Strict: rejected with tpdu-nr-nonzero.
  auto strict = decode_tpdu(Bytes(tpdu), DecodeOptions{true});
  REQUIRE_FALSE(strict.ok());
  CHECK(strict.error().kind == DecodeErrorKind::kTpduNrNonZero);
  CHECK(strict.error().offset == 2);
  // Default (relay): accepted, counted.
  std::vector<Anomaly> anomalies;
  auto relay = decode_tpdu(Bytes(tpdu), DecodeOptions{}, &anomalies);
  REQUIRE(relay.ok());
  CHECK(relay->nr == 1u);
  CHECK(relay->eot == true);
  CHECK(has_anomaly(anomalies, AnomalyKind::kTpduNrNonZero));
  // Same through a TPKT.
  const ByteVec framed = wrap_tpkt(tpdu);
  CHECK_FALSE(decode_frame(Bytes(framed), DecodeOptions{true}).ok());
  auto f = decode_frame(Bytes(framed));
  REQUIRE(f.ok());
  CHECK(has_anomaly(f->anomalies, AnomalyKind::kTpduNrNonZero));
}

TEST_CASE("frames.tsv: V1 repaired is V2", "[vectors][codec]") {
  const auto rows = isoproxy::test::load_vectors();
  ByteVec v1 = isoproxy::test::find_vector(rows, "V1").bytes();
  const ByteVec v2 = isoproxy::test::find_vector(rows, "V2").bytes();
  REQUIRE(v1.size() == 44);
  set_reserved(MutableBytes(v1), 0);
  CHECK(v1 == v2);
}

TEST_CASE("vectors loader: file shape", "[vectors][loader]") {
  const auto rows = isoproxy::test::load_vectors();
  std::set<std::string> ids;
  for (const Vector& v : rows) {
    INFO(v.where());
    CHECK(ids.insert(v.id).second);
    CHECK_FALSE(v.segments.empty());
    for (const auto& s : v.segments) CHECK_FALSE(s.empty());
    CHECK_FALSE(v.source.empty());
    CHECK(v.line > 0);
  }
  SECTION("N6 is two reads: a partial header, then the rest") {
    const Vector& n6 = isoproxy::test::find_vector(rows, "N6");
    REQUIRE(n6.segments.size() == 2);
    CHECK(n6.segments[0] == ByteVec{0x03, 0x00, 0x00});
    CHECK(n6.segments[1] == ByteVec{0x09, 0x02, 0xF0, 0x80, 0xDE, 0xAD});
    CHECK(n6.bytes().size() == 9);
  }
  SECTION("spaces ignored, case-insensitive") {
    const Vector& v1 = isoproxy::test::find_vector(rows, "V1");
    REQUIRE(v1.segments.size() == 1);
    CHECK(v1.bytes().size() == 44);
    CHECK(v1.bytes()[1] == 0x11);
    const Vector& v13 = isoproxy::test::find_vector(rows, "V13");  // "0300000E097000 1A00C10302F080"
    CHECK(to_hex(Bytes(v13.bytes())) == "0300000E0970001A00C10302F080");
    const Vector& v8 = isoproxy::test::find_vector(rows, "V8");  // lower case in the file
    CHECK(v8.bytes()[6] == 0x4E);
  }
  SECTION("kinds") {
    CHECK(isoproxy::test::find_vector(rows, "N5").kinds() == std::vector<std::string>{"DT", "DT"});
    CHECK(isoproxy::test::find_vector(rows, "V16c").kinds().empty());
    CHECK(isoproxy::test::find_vector(rows, "V17a").cotp_only());
    CHECK_FALSE(isoproxy::test::find_vector(rows, "V1").cotp_only());
  }
  SECTION("an unknown id throws") {
    CHECK_THROWS_WITH(isoproxy::test::find_vector(rows, "X99"), Catch::Contains("X99"));
  }
}

TEST_CASE("vectors loader: clear failures", "[vectors][loader]") {
  SECTION("missing file names the path") {
    CHECK_THROWS_WITH(isoproxy::test::load_vectors("/nonexistent/frames.tsv"),
                      Catch::Contains("/nonexistent/frames.tsv") && Catch::Contains("ISOPROXY_VECTORS"));
  }
  const std::string path = "/tmp/isoproxy_vectors_test_" + std::to_string(::getpid()) + ".tsv";
  auto write = [&path](const std::string& text) {
    std::ofstream out(path, std::ios::trunc);
    out << text;
  };
  SECTION("wrong field count names the line") {
    write("# comment\n\nV1\tDT\tany\t0300000702f080\taccept\n");
    CHECK_THROWS_WITH(isoproxy::test::load_vectors(path), Catch::Contains(":3") && Catch::Contains("6 tab-separated"));
  }
  SECTION("bad hex") {
    write("V1\tDT\tany\t0300000702f08g\taccept\tsrc\n");
    CHECK_THROWS_WITH(isoproxy::test::load_vectors(path), Catch::Contains("'g'"));
    write("V1\tDT\tany\t0300000702f08\taccept\tsrc\n");
    CHECK_THROWS_WITH(isoproxy::test::load_vectors(path), Catch::Contains("odd"));
    write("V1\tDT\tany\t030000||0902f080dead\taccept\tsrc\n");
    CHECK_THROWS_WITH(isoproxy::test::load_vectors(path), Catch::Contains("empty hex segment"));
  }
  SECTION("duplicate id") {
    write("V1\tDT\tany\t0300000702f080\taccept\tsrc\nV1\tDT\tany\t0300000702f080\taccept\tsrc\n");
    CHECK_THROWS_WITH(isoproxy::test::load_vectors(path), Catch::Contains("duplicate id V1"));
  }
  SECTION("no rows") {
    write("# only a comment\n");
    CHECK_THROWS_WITH(isoproxy::test::load_vectors(path), Catch::Contains("no rows"));
  }
  SECTION("CRLF, comments, blank lines and ISOPROXY_VECTORS") {
    write("# c\r\n\r\nA1\tDT\tany\t03 00 00 07 | 02 F0 80\taccept\tsrc\r\n");
    const char* old = std::getenv("ISOPROXY_VECTORS");
    const std::string saved = old ? old : "";
    ::setenv("ISOPROXY_VECTORS", path.c_str(), 1);
    const std::string resolved = isoproxy::test::vectors_path();
    std::vector<Vector> rows;
    CHECK_NOTHROW(rows = isoproxy::test::load_vectors());
    if (old) ::setenv("ISOPROXY_VECTORS", saved.c_str(), 1);
    else ::unsetenv("ISOPROXY_VECTORS");
    CHECK(resolved == path);
    REQUIRE(rows.size() == 1);
    CHECK(rows[0].id == "A1");
    CHECK(rows[0].source == "src");
    CHECK(rows[0].line == 3);
    REQUIRE(rows[0].segments.size() == 2);
    CHECK(to_hex(Bytes(rows[0].bytes())) == "0300000702F080");
  }
  std::remove(path.c_str());
}

// The checker itself must not be vacuous: wrong expectations must fail.
TEST_CASE("vectors checker: wrong expectations are caught", "[vectors][checker]") {
  const auto rows = isoproxy::test::load_vectors();
  const std::string v4 = "0300001611d00001000500c0010ac1020001c2020001";

  SECTION("a correct synthetic row passes") {
    const auto p = check_row(synthetic("S1", "CC", "resp->init", v4, "accept; dst_ref=1 src_ref=0x0005 class=0 tpdu_size=1024 calling=0001 called=0001; parameter order C0 C1 C2"), rows);
    INFO(joined(p));
    CHECK(p.empty());
  }
  SECTION("an unrecognised key fails") {
    const auto p = check_row(synthetic("S2", "CC", "resp->init", v4, "accept; dst_ref=1 colour=blue"), rows);
    CHECK(mentions(p, "unrecognised key=value token \"colour=blue\""));
  }
  SECTION("a malformed key=value token fails") {
    const auto p = check_row(synthetic("S3", "CC", "resp->init", v4, "accept; dst_ref= 1"), rows);
    CHECK(mentions(p, "malformed key=value"));
  }
  SECTION("wrong values fail") {
    const auto p = check_row(synthetic("S4", "CC", "resp->init", v4,
                                       "accept; dst_ref=2 src_ref=5 calling=\"0001\" tpdu_size=2048 class=1 reserved=0x11"),
                             rows);
    INFO(joined(p));
    CHECK(mentions(p, "dst_ref=2"));
    CHECK(mentions(p, "calling=\"0001\""));
    CHECK(mentions(p, "tpdu_size=2048"));
    CHECK(mentions(p, "class=1"));
    CHECK(mentions(p, "reserved=0x11"));
    CHECK_FALSE(mentions(p, "src_ref=5"));
  }
  SECTION("a key that does not apply to the type fails") {
    const auto p = check_row(synthetic("S5", "CC", "resp->init", v4, "accept; cause=0"), rows);
    CHECK(mentions(p, "no such field"));
  }
  SECTION("wrong verdicts fail") {
    CHECK(mentions(check_row(synthetic("S6", "CC", "any", v4, "reject: because"), rows), "neither the framer nor decode_frame"));
    CHECK(mentions(check_row(synthetic("S7", "CC", "any", v4, "need-more"), rows), "need-more with nothing held"));
    CHECK(mentions(check_row(synthetic("S8", "?", "any", "0400000702f080", "accept"), rows), "framer error"));
    CHECK(mentions(check_row(synthetic("S9", "DT", "cotp-only", "02f080", "reject in strict mode: TPDU-NR=0; tolerate+count in relay mode"), rows),
                   "strict mode accepted"));
    CHECK(mentions(check_row(synthetic("S10", "?", "any", "0300000702f080", "whatever"), rows), "no verdict"));
  }
  SECTION("wrong kinds fail") {
    CHECK(mentions(check_row(synthetic("S11", "CR", "any", v4, "accept"), rows), "kind column says CR, decoded CC"));
    CHECK(mentions(check_row(synthetic("S12", "DT", "any", "0300000702f0000300000902f080dead", "accept"), rows), "decoded DT+DT"));
    CHECK(mentions(check_row(synthetic("S13", "XX", "any", "0300000702f080", "accept"), rows), "unknown TPDU type \"XX\""));
    // V17d's bytes: the type is known (DT) before the LI is refused.
    CHECK(mentions(check_row(synthetic("S14", "?", "cotp-only", "03f08032", "reject"), rows), "knew the type"));
    // N4's bytes: LI 0 is refused before any type.
    CHECK(mentions(check_row(synthetic("S15", "DT", "any", "0300000700f080", "reject"), rows), "before the type was known"));
  }
  SECTION("wrong phrases fail") {
    const std::string v18 = "15E00000000000C00108C703001030AB0548656C6C6F010203";
    auto p = check_row(synthetic("S16", "CR", "cotp-only", v18,
                                 "accept; alternative classes 0,1,2, unknown param 0xAC skipped, user data 0102"),
                       rows);
    INFO(joined(p));
    CHECK(mentions(p, "alternative classes"));
    CHECK(mentions(p, "unknown param 0xAC skipped"));
    CHECK(mentions(p, "user data"));
    p = check_row(synthetic("S17", "DR", "any", "0300000b06800001000080", "accept; reason 0x80 (odd) kept as unknown"), rows);
    CHECK(mentions(p, "should be unknown"));
    p = check_row(synthetic("S18", "DR", "any", "0300000b06800001000086", "accept; reason 0x86 mismatched references"), rows);
    CHECK(mentions(p, "should be named"));
    p = check_row(synthetic("S19", "DR", "any", "0300000b06800001000084", "accept; reason 0x84 protocol error"), rows);
    CHECK(mentions(p, "does not say \"protocol error\""));
    p = check_row(synthetic("S20", "DT", "any", "0300000702f080", "accept; fix: V2; one 9-byte DT; empty non-EOT DT"), rows);
    CHECK(mentions(p, "fix:"));
    CHECK(mentions(p, "one 9-byte DT"));
    CHECK(mentions(p, "non-EOT"));
    p = check_row(synthetic("S21", "DT", "any", "0300000702f080", "accept; echoes V99 TSAPs"), rows);
    CHECK(mentions(p, "V99"));
    p = check_row(synthetic("S22", "?", "any", "0300000602f0", "reject: version 4"), rows);
    CHECK(mentions(p, "version 4"));
    p = check_row(synthetic("S23", "?", "any", "030000", "need-more: declared 8, 7 present"), rows);
    CHECK(mentions(p, "declared 8"));
    p = check_row(synthetic("S24", "CR", "any", "0300001611e00000000100c0010ac1090100c2020102", "reject: parameter C2 length 9 overruns LI"), rows);
    CHECK(mentions(p, "does not point at it"));
    p = check_row(synthetic("S25", "CC", "any", v4, "accept; S7 calling=0100 called=0102 (PG rack 0 slot 3) (ASCII)"), rows);
    CHECK(mentions(p, "PG rack 0 slot 3"));
    CHECK(mentions(p, "(ASCII)"));
    p = check_row(synthetic("S26", "DT", "any", "0300000702f080", "accept; no EOT"), rows);
    CHECK(mentions(p, "no EOT: decoded with EOT"));
    p = check_row(synthetic("S27", "DT", "any", "0300000702f000", "accept; EOT"), rows);
    CHECK(mentions(p, "EOT: decoded without EOT"));
  }
}
