// The filter chain as the session drives it: a stream split at random by the
// framer, each frame decoded and run through the chain, the output gathered.
#include <catch2/catch.hpp>
#include <random>

#include "codec/tpkt.h"
#include "filters/chain.h"
#include "support/vectors.h"
#include "unit/filters/fake_context.h"
#include "unit/filters/frame_util.h"

using namespace isoproxy;
using namespace isoproxy::test;
using filters::Direction;
using filters::Verdict;

namespace {

// A test filter that records the order it ran in and can drop, replace or end.
class Probe final : public filters::Filter {
 public:
  Probe(std::string name, std::vector<std::string>& order, std::string action)
      : name_(std::move(name)), order_(order), action_(std::move(action)) {}
  Verdict on_frame(filters::FilterContext& ctx, filters::ChainFrame& f) override {
    order_.push_back(name_);
    ctx.count(name_, "seen");
    if (action_ == "drop-dt" && f.type() == codec::TpduType::kDT) return Verdict::kDrop;
    if (action_ == "grow-cr" && f.type() == codec::TpduType::kCR) {
      auto owned = codec::OwnedTpdu::from(f.decoded().tpdu);
      const std::vector<std::uint8_t> tsap = {'L', 'O', 'N', 'G', 'E', 'R', '-', 'T', 'S', 'A', 'P'};
      owned.set_param(codec::param::kCalledTsap, tsap);
      auto bytes = codec::encode_frame(f.decoded().header.reserved, owned);
      if (!bytes || !f.replace(std::move(*bytes))) return Verdict::kEndSession;
    }
    if (action_ == "end-on-dr" && f.type() == codec::TpduType::kDR) {
      ctx.end_session("probe saw a DR");
      return Verdict::kEndSession;
    }
    return Verdict::kContinue;
  }

 private:
  std::string name_;
  std::vector<std::string>& order_;
  std::string action_;
};

class ProbeFactory final : public filters::FilterFactory {
 public:
  ProbeFactory(std::string name, std::vector<std::string>& order, std::string action)
      : FilterFactory(std::move(name)), order_(order), action_(std::move(action)) {}
  std::string_view kind() const override { return "probe"; }
  std::unique_ptr<filters::Filter> create() const override { return std::make_unique<Probe>(name(), order_, action_); }
  std::string settings_toml() const override { return {}; }

 private:
  std::vector<std::string>& order_;
  std::string action_;
};

// Feeds `stream` to the framer in random pieces (seeded), runs every frame
// through `chain`, and returns the bytes the chain lets through.
std::vector<std::uint8_t> feed(filters::FilterChain& chain, FakeContext& ctx, const std::vector<std::uint8_t>& stream,
                               Direction dir, std::uint32_t seed) {
  std::mt19937 rng(seed);
  codec::TpktFramer framer;
  std::vector<std::uint8_t> out;
  std::size_t at = 0;
  while (at < stream.size()) {
    const std::size_t n = std::min<std::size_t>(stream.size() - at, 1 + rng() % 40);
    std::vector<std::uint8_t> piece(stream.begin() + static_cast<std::ptrdiff_t>(at),
                                    stream.begin() + static_cast<std::ptrdiff_t>(at + n));
    at += n;
    codec::Bytes in(piece);
    for (;;) {
      auto r = framer.next(in);
      if (r.status != codec::TpktFramer::kFrame) {
        REQUIRE(r.status == codec::TpktFramer::kNeedMore);
        break;
      }
      std::vector<std::uint8_t> frame(r.frame.begin(), r.frame.end());
      auto decoded = codec::decode_frame(frame);
      REQUIRE(decoded.ok());
      filters::ChainFrame cf(codec::MutableBytes(frame), &*decoded, dir);
      const Verdict v = chain.run(ctx, cf);
      if (v == Verdict::kContinue) {
        codec::Bytes b = std::as_const(cf).bytes();
        out.insert(out.end(), b.begin(), b.end());
      }
    }
  }
  REQUIRE(framer.held() == 0);
  return out;
}

std::vector<std::uint8_t> concat(std::initializer_list<std::vector<std::uint8_t>> parts) {
  std::vector<std::uint8_t> all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

}  // namespace

TEST_CASE("chain: client-to-upstream runs in order, upstream-to-client in reverse", "[filters][chain]") {
  std::vector<std::string> order;
  filters::FactoryList list = {std::make_shared<ProbeFactory>("a", order, ""), std::make_shared<ProbeFactory>("b", order, ""),
                               std::make_shared<ProbeFactory>("c", order, "")};
  filters::FilterChain chain(list);
  FakeContext ctx;
  const auto rows = load_vectors();
  const auto dt = find_vector(rows, "V10").bytes();
  feed(chain, ctx, dt, Direction::kToUpstream, 1);
  CHECK(order == std::vector<std::string>{"a", "b", "c"});
  order.clear();
  feed(chain, ctx, dt, Direction::kToClient, 2);
  CHECK(order == std::vector<std::string>{"c", "b", "a"});
  CHECK(ctx.count_of("a.seen") == 2);
  CHECK(ctx.count_of("c.seen") == 2);
}

TEST_CASE("chain: the reserved repair at random splits changes only byte 1 of the CC", "[filters][chain]") {
  const auto rows = load_vectors();
  const auto v1 = find_vector(rows, "V1").bytes();
  const auto v2 = find_vector(rows, "V2").bytes();
  const auto dt = find_vector(rows, "V10r").bytes();
  const auto empty_dt = find_vector(rows, "V11").bytes();
  auto reserved = factory_from_toml("tpkt-reserved", "tpdu = [\"CC\"]\n", nullptr, "reserved");
  auto annotate = factory_from_toml("tsap-annotate", "", nullptr, "annotate");
  REQUIRE(reserved);
  REQUIRE(annotate);
  // The vendor CC, then data: the CC repaired, every other byte as it was.
  const auto stream = concat({v1, dt, empty_dt, dt});
  const auto expect = concat({v2, dt, empty_dt, dt});
  for (std::uint32_t seed = 1; seed <= 50; ++seed) {
    INFO("seed " << seed);
    filters::FilterChain chain({annotate, reserved});
    FakeContext ctx;
    CHECK(feed(chain, ctx, stream, Direction::kToClient, seed) == expect);
    CHECK(ctx.count_of("reserved.repaired") == 1);
    CHECK(ctx.count_of("annotate.cc") == 1);
    REQUIRE(ctx.ann.called_tsap);
    const auto called = *ctx.ann.called_tsap;
    CHECK(std::string(called.begin(), called.end()) == "EXCHANGETSAP1");
  }
}

TEST_CASE("tsap-annotate records the client's CR and the upstream's CC, not one sent the other way", "[filters][chain]") {
  auto annotate = factory_from_toml("tsap-annotate", "", nullptr, "annotate");
  REQUIRE(annotate);
  filters::FilterChain chain({annotate});
  FakeContext ctx;
  const auto tsap = [](const filters::TsapValue& v) { return v ? ByteVec((*v).begin(), (*v).end()) : ByteVec{}; };
  feed(chain, ctx, row("V5"), Direction::kToUpstream, 1);  // the client's CR: calling 0100, called 0102
  CHECK(tsap(ctx.ann.calling_tsap) == ByteVec{0x01, 0x00});
  // A CR from the upstream (calling "0-0ABCD0", TPDU size 1024) and a CC
  // from the client: neither is theirs to say.
  feed(chain, ctx, row("V7"), Direction::kToClient, 2);
  feed(chain, ctx, row("V2"), Direction::kToUpstream, 3);
  CHECK(tsap(ctx.ann.calling_tsap) == ByteVec{0x01, 0x00});
  CHECK(tsap(ctx.ann.called_tsap) == ByteVec{0x01, 0x02});
  CHECK(ctx.ann.tpdu_size_code_cr == std::optional<std::uint8_t>{0x0A});
  CHECK_FALSE(ctx.ann.tpdu_size_code_cc);
  CHECK(ctx.count_of("annotate.cr") == 1);
  CHECK(ctx.count_of("annotate.cc") == 0);
  // The upstream's CC is recorded (its TSAPs do not replace the CR's).
  feed(chain, ctx, row("V2"), Direction::kToClient, 4);
  CHECK(ctx.ann.tpdu_size_code_cc == std::optional<std::uint8_t>{0x0B});
  CHECK(ctx.count_of("annotate.cc") == 1);
  CHECK(tsap(ctx.ann.calling_tsap) == ByteVec{0x01, 0x00});
}

TEST_CASE("tsap-annotate: a later CR replaces the TSAPs, one it lacks included", "[filters][chain]") {
  auto annotate = factory_from_toml("tsap-annotate", "", nullptr, "annotate");
  REQUIRE(annotate);
  filters::FilterChain chain({annotate});
  FakeContext ctx;
  feed(chain, ctx, row("V5"), Direction::kToUpstream, 1);  // calling 0100, called 0102
  REQUIRE(ctx.ann.calling_tsap);
  feed(chain, ctx, row("V6"), Direction::kToClient, 2);  // its CC
  REQUIRE(ctx.ann.tpdu_size_code_cc);
  REQUIRE(ctx.ann.class_cc);
  // A second CR (snap7 answers one at any time) with a called TSAP only.
  codec::OwnedTpdu second = owned(row("V5"));
  std::erase_if(second.params, [](const codec::OwnedParam& p) { return p.code == codec::param::kCallingTsap; });
  second.params[0].value = {0x01, 0x03};
  REQUIRE(second.params[0].code == codec::param::kCalledTsap);
  feed(chain, ctx, encode(second), Direction::kToUpstream, 2);
  CHECK_FALSE(ctx.ann.calling_tsap);  // not the first CR's 0100
  // Nor is the CC that answered the first CR this one's.
  CHECK_FALSE(ctx.ann.tpdu_size_code_cc);
  CHECK_FALSE(ctx.ann.class_cc);
  CHECK_FALSE(ctx.ann.responder_ref);
  REQUIRE(ctx.ann.called_tsap);
  CHECK(ByteVec((*ctx.ann.called_tsap).begin(), (*ctx.ann.called_tsap).end()) == ByteVec{0x01, 0x03});
  CHECK(ctx.count_of("annotate.cr") == 2);
}

TEST_CASE("chain: drop, length-changing replace and end-session", "[filters][chain]") {
  const auto rows = load_vectors();
  const auto cr = find_vector(rows, "V5").bytes();
  const auto dt = find_vector(rows, "V10").bytes();
  const auto dr = find_vector(rows, "V14").bytes();
  std::vector<std::string> order;

  SECTION("a dropped frame goes no further and later filters do not see it") {
    filters::FilterChain chain({std::make_shared<ProbeFactory>("drop", order, "drop-dt"),
                                std::make_shared<ProbeFactory>("after", order, "")});
    FakeContext ctx;
    CHECK(feed(chain, ctx, concat({cr, dt, dt}), Direction::kToUpstream, 7) == cr);
    CHECK(ctx.count_of("after.seen") == 1);  // only the CR reached it
  }
  SECTION("a replaced CR is re-encoded with LI and TPKT length recomputed, and later filters see the new one") {
    filters::FilterChain chain({std::make_shared<ProbeFactory>("grow", order, "grow-cr")});
    FakeContext ctx;
    const auto out = feed(chain, ctx, concat({cr, dt}), Direction::kToUpstream, 9);
    REQUIRE(out.size() == cr.size() + (11 - 2) + dt.size());
    auto f = codec::decode_frame(codec::Bytes(out).first(cr.size() + 9));
    REQUIRE(f.ok());
    CHECK(f->header.length == cr.size() + 9);
    CHECK(f->tpdu.li == codec::decode_frame(cr)->tpdu.li + 9);
    REQUIRE(f->tpdu.called_tsap());
    CHECK(std::string(f->tpdu.called_tsap()->begin(), f->tpdu.called_tsap()->end()) == "LONGER-TSAP");
    CHECK(std::vector<std::uint8_t>(out.end() - static_cast<std::ptrdiff_t>(dt.size()), out.end()) == dt);
  }
  SECTION("end-session stops the frame in hand and records the reason") {
    filters::FilterChain chain({std::make_shared<ProbeFactory>("end", order, "end-on-dr")});
    FakeContext ctx;
    CHECK(feed(chain, ctx, concat({dt, dr}), Direction::kToClient, 3) == dt);
    CHECK(ctx.ended == "probe saw a DR");
  }
}

TEST_CASE("chain: a reserved byte repaired before a filter that re-encodes the frame stays repaired", "[filters][chain]") {
  // The vendor CC (reserved 0x11). Toward the client the chain runs in
  // reverse, so with `reserved` listed last it repairs the CC first; the
  // filter after it then builds a new frame, which must keep the repair.
  const ByteVec v1 = row("V1");
  auto reserved = factory_from_toml("tpkt-reserved", "tpdu = [\"CR\", \"CC\"]\n", nullptr, "reserved");
  REQUIRE(reserved);
  codec::OwnedTpdu cr_tpdu = owned(v1);
  cr_tpdu.code = 0xE0;
  const ByteVec cr = encode(cr_tpdu, 0x11);  // the vendor's CR: reserved 0x11 too

  SECTION("tsap-rewrite puts back a TSAP of another length in the CC") {
    auto rw = factory_from_toml("tsap-rewrite", "[[rule]]\nfield = \"called\"\nfrom = \"EXCHANGETSAP1\"\nto = \"MTA2TSAP\"\n",
                                nullptr, "rw");
    REQUIRE(rw);
    for (const bool reserved_first : {false, true}) {
      INFO("reserved listed " << (reserved_first ? "first" : "last"));
      filters::FilterChain chain(reserved_first ? filters::FactoryList{reserved, rw} : filters::FactoryList{rw, reserved});
      FakeContext ctx;
      const auto up = feed(chain, ctx, cr, Direction::kToUpstream, 1);
      REQUIRE(up.size() == cr.size() - 5);
      CHECK(up[1] == 0x00);
      // The upstream echoes the rewritten TSAP in its CC, with reserved 0x11.
      const ByteVec cc = with_param(v1, codec::param::kCalledTsap, {'M', 'T', 'A', '2', 'T', 'S', 'A', 'P'});
      const auto down = feed(chain, ctx, cc, Direction::kToClient, 2);
      CHECK(down == row("V2"));  // V1 repaired: the TSAP put back, reserved 0
      CHECK(ctx.count_of("rw.restored-cc") == 1);
      CHECK(ctx.count_of("reserved.repaired") == 2);
    }
  }
  SECTION("tpdu-size adds the size a CC lacks") {
    auto ts = factory_from_toml("tpdu-size", "max = 2048\nadd_if_missing = true\n", nullptr, "ts");
    REQUIRE(ts);
    for (const bool reserved_first : {false, true}) {
      INFO("reserved listed " << (reserved_first ? "first" : "last"));
      filters::FilterChain chain(reserved_first ? filters::FactoryList{reserved, ts} : filters::FactoryList{ts, reserved});
      FakeContext ctx;
      const ByteVec cr_without = without_param(cr, codec::param::kTpduSize);
      const auto up = feed(chain, ctx, cr_without, Direction::kToUpstream, 3);
      REQUIRE(up.size() == cr_without.size() + 3);
      CHECK(up[1] == 0x00);
      const auto down = feed(chain, ctx, without_param(v1, codec::param::kTpduSize), Direction::kToClient, 4);
      REQUIRE(down.size() == v1.size());
      CHECK(down[1] == 0x00);
      CHECK(ctx.count_of("ts.added") == 2);
    }
  }
}
