// The test tooling itself, without isoproxy: the rfc1006-peer binary (both
// roles), the in-process TestServer/Conn peers and frame builders, and
// BackgroundProcess/ProxyProcess (against a stand-in script). Every wait is
// on an event with a deadline; nothing sleeps.
#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "codec/text.h"
#include "codec/x224.h"
#include "support/peers.h"
#include "support/process.h"
#include "support/proxy_process.h"
#include "support/vectors.h"

using isoproxy::test::BackgroundProcess;
using isoproxy::test::ByteVec;
using isoproxy::test::Conn;
using isoproxy::test::Millis;
using isoproxy::test::TestServer;
namespace codec = isoproxy::codec;
namespace t = isoproxy::test;

namespace {

using Out = BackgroundProcess::Stream;

std::string peer_binary() {
  std::string path = isoproxy::test::peer_binary();
  if (path.empty()) FAIL("no rfc1006-peer: build the rfc1006-peer target and pass its path to integration_tests");
  return path;
}

// `rfc1006-peer respond` on an ephemeral port, its port read from "listening on ...".
struct Responder {
  std::unique_ptr<BackgroundProcess> proc;
  std::uint16_t port = 0;

  std::optional<std::string> wait_line(const std::string& re, Millis timeout = Millis(10000)) {
    return proc->wait_for_line(Out::kOut, std::regex(re), timeout);
  }
  std::string output() const { return proc->text(Out::kOut) + proc->text(Out::kErr); }
};

Responder start_responder(std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {peer_binary(), "respond", "--listen", "127.0.0.1:0"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Responder r;
  r.proc = std::make_unique<BackgroundProcess>(argv);
  INFO(r.proc->spawn_error());
  REQUIRE(r.proc->started());
  const auto line = r.wait_line(R"(^listening on 127\.0\.0\.1:\d+$)");
  INFO(r.output());
  REQUIRE(line);
  r.port = static_cast<std::uint16_t>(std::stoul(line->substr(line->rfind(':') + 1)));
  REQUIRE(r.port != 0);
  return r;
}

t::ProcessResult run_connect(std::uint16_t port, std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {peer_binary(), "connect", "--to", "127.0.0.1:" + std::to_string(port)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return t::run_process(argv, {}, std::chrono::seconds(30));
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::size_t count_lines(const std::string& s) {
  std::size_t n = 0;
  for (const char c : s) n += c == '\n';
  return n;
}

// A connected AF_UNIX stream pair: the test writes one end in whatever
// pieces it likes, a Conn reads the other.
struct Pair {
  Conn reader;
  int writer = -1;
  Pair() {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    reader = Conn(sv[0]);
    writer = sv[1];
  }
  ~Pair() {
    if (writer >= 0) ::close(writer);
  }
  void write(const ByteVec& b) { REQUIRE(::write(writer, b.data(), b.size()) == static_cast<ssize_t>(b.size())); }
};

std::filesystem::path scratch_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("isoproxy-peer-test-" + std::to_string(::getpid())) / name;
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace

// ---------------------------------------------------------------------------
// rfc1006-peer

TEST_CASE("peer: a strict initiator refuses the vendor CC (reserved 0x11) and exits 3", "[peer][strict]") {
  auto resp = start_responder();
  const auto r = run_connect(resp.port, {"--strict"});
  INFO(r.out << r.err << resp.output());
  CHECK(r.exit_code == 3);
  CHECK(contains(r.out, "refused: TPKT reserved byte 0x11 in CC (strict peer disconnects)\n"));
  CHECK_FALSE(contains(r.out, "DT echoed ok"));
  CHECK(resp.wait_line(R"(^\[C1\] sent CC reserved=0x11$)"));
  // The strict side closed TCP; the responder saw it.
  CHECK(resp.wait_line(R"(^\[C1\] closed \(peer EOF\)$)"));
  CHECK(resp.proc->count_lines(Out::kOut, std::regex("echoed DT")) == 0);
}

TEST_CASE("peer: a tolerant initiator takes the vendor CC and gets its DT echoed", "[peer]") {
  auto resp = start_responder();
  const auto r = run_connect(resp.port);
  INFO(r.out << r.err << resp.output());
  CHECK(r.exit_code == 0);
  CHECK(r.err.empty());
  CHECK(contains(r.out, "CC reserved=0x11 calling=SWISSLIFETSAP called=EXCHANGETSAP1 tpdu_size=2048"));
  CHECK(contains(r.out, "DT echoed ok (24 bytes)\n"));
  CHECK(resp.wait_line(R"(^\[C1\] accepted from 127\.0\.0\.1:\d+$)"));
  CHECK(resp.wait_line(R"(^\[C1\] CR calling=SWISSLIFETSAP called=EXCHANGETSAP1 tpdu_size=2048)"));
  CHECK(resp.wait_line(R"(^\[C1\] echoed DT 24 bytes$)"));
  CHECK(resp.wait_line(R"(^\[C1\] closed)"));
}

TEST_CASE("peer: --reserved 0 satisfies a strict initiator", "[peer][strict]") {
  auto resp = start_responder({"--reserved", "0"});
  const auto r = run_connect(resp.port, {"--strict"});
  INFO(r.out << r.err << resp.output());
  CHECK(r.exit_code == 0);
  CHECK(contains(r.out, "CC reserved=0x00 calling=SWISSLIFETSAP called=EXCHANGETSAP1 tpdu_size=2048"));
  CHECK(contains(r.out, "DT echoed ok (24 bytes)"));
  CHECK(resp.wait_line(R"(^\[C1\] sent CC reserved=0x00$)"));
}

TEST_CASE("peer: the responder's CC is the vendor CC byte for byte, DTs echo unchanged, DR closes", "[peer][vectors]") {
  auto resp = start_responder();
  Conn c = t::connect_to("127.0.0.1", resp.port);
  REQUIRE(c.valid());
  // The CR's SRC-REF (0x01CA by default) comes back as DST-REF; SRC-REF 0x0029, reserved 0x11: V1.
  REQUIRE(c.send_all(t::make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
  const auto cc = c.recv_frame();
  INFO(c.error() << "\n" << resp.output());
  REQUIRE(cc);
  CHECK(codec::to_hex(*cc) == codec::to_hex(t::vendor_cc()));

  // A DT with a non-zero reserved byte, sent one byte per write: echoed as received.
  const ByteVec dt = t::make_dt("split across writes", true, 0x11);
  c.set_nodelay();
  for (const std::uint8_t b : dt) REQUIRE(c.send_all(codec::Bytes(&b, 1)));
  const auto echo = c.recv_frame();
  REQUIRE(echo);
  CHECK(*echo == dt);
  CHECK(resp.wait_line(R"(^\[C1\] echoed DT 19 bytes$)"));

  REQUIRE(c.send_all(t::make_dr(0x80, 0x0029, 0x01CA)));
  CHECK(c.wait_eof());
  CHECK(resp.wait_line(R"(^\[C1\] DR reason=0x80 \(normal disconnect)"));
  CHECK(resp.wait_line(R"(^\[C1\] closed \(DR\)$)"));
}

TEST_CASE("peer: --no-tsaps-echo answers with the TPDU size only, --src-ref sets SRC-REF", "[peer]") {
  auto resp = start_responder({"--no-tsaps-echo", "--src-ref", "0x1234", "--reserved", "0"});
  Conn c = t::connect_to("127.0.0.1", resp.port);
  REQUIRE(c.valid());
  REQUIRE(c.send_all(t::make_cr("A", "B", 0x0A, 0x0007)));
  const auto cc = c.recv_frame();
  REQUIRE(cc);
  const auto d = codec::decode_frame(codec::Bytes(*cc));
  REQUIRE(d.ok());
  CHECK(d->tpdu.type == codec::TpduType::kCC);
  CHECK(d->tpdu.dst_ref == 0x0007);
  CHECK(d->tpdu.src_ref == 0x1234);
  CHECK_FALSE(d->tpdu.calling_tsap());
  CHECK_FALSE(d->tpdu.called_tsap());
  CHECK(d->tpdu.tpdu_size_code() == 0x0A);
  CHECK(d->anomalies.empty());
}

TEST_CASE("peer: the responder serves many connections at once and exits 0 on SIGTERM", "[peer]") {
  auto resp = start_responder();
  std::vector<Conn> conns;
  for (int i = 0; i < 8; ++i) {
    conns.push_back(t::connect_to("127.0.0.1", resp.port));
    REQUIRE(conns.back().valid());
  }
  // Interleaved: every connection has its CR in before any CC is read.
  for (auto& c : conns) REQUIRE(c.send_all(t::make_cr("CALLING", "CALLED")));
  for (auto& c : conns) {
    const auto cc = c.recv_frame();
    INFO(c.error());
    REQUIRE(cc);
    CHECK((*cc)[1] == 0x11);
  }
  for (std::size_t i = 0; i < conns.size(); ++i) {
    const ByteVec dt = t::make_dt("connection " + std::to_string(i));
    REQUIRE(conns[i].send_all(codec::Bytes(dt)));
    const auto echo = conns[i].recv_frame();
    REQUIRE(echo);
    CHECK(*echo == dt);
  }
  CHECK(resp.proc->signal(SIGTERM));
  CHECK(resp.proc->wait_exit().value_or(-1) == 0);
  for (auto& c : conns) CHECK(c.wait_eof());
  INFO(resp.output());
  CHECK(resp.proc->count_lines(Out::kOut, std::regex(R"(^\[C\d\] closed \(shutdown\)$)")) == 8);
  CHECK(resp.proc->count_lines(Out::kOut, std::regex(R"(^stopping on SIGTERM$)")) == 1);
}

TEST_CASE("peer: respond --once exits 0 when its one connection ends", "[peer]") {
  auto resp = start_responder({"--once"});
  {
    Conn c = t::connect_to("127.0.0.1", resp.port);
    REQUIRE(c.valid());
    REQUIRE(c.send_all(t::make_cr("X", "Y")));
    REQUIRE(c.recv_frame());
    CHECK(resp.proc->running());
  }
  CHECK(resp.proc->wait_exit().value_or(-1) == 0);
  CHECK(resp.wait_line(R"(^\[C1\] closed \(peer EOF\)$)"));
}

TEST_CASE("peer: connect sends a class 0 CR, reports a DR's reason and exits 4", "[peer]") {
  t::FrameLog seen;
  TestServer server([&seen](Conn& c) {
    auto cr = c.recv_frame();
    if (!cr) return;
    seen.add(*cr);
    c.send_all(codec::Bytes(t::make_dr(0x03, 0x01CA)));
    c.wait_eof();
  });
  REQUIRE(server.ok());
  const auto r = run_connect(server.port(), {"--calling", "hex:0100", "--called", "hex:0102"});
  INFO(r.out << r.err);
  CHECK(r.exit_code == 4);
  CHECK(contains(r.out, "disconnected: DR reason=0x03 (address unknown)\n"));
  REQUIRE(seen.wait_size(1));
  const ByteVec cr = seen.frames().front();
  const auto d = codec::decode_frame(codec::Bytes(cr));
  REQUIRE(d.ok());
  CHECK(d->header.reserved == 0);
  CHECK(d->tpdu.type == codec::TpduType::kCR);
  CHECK(d->tpdu.code == 0xE0);
  CHECK(d->tpdu.class_option == 0x00);
  CHECK(d->tpdu.dst_ref == 0);
  CHECK(d->tpdu.tpdu_size_code() == 0x0B);
  CHECK(codec::to_hex(*d->tpdu.calling_tsap()) == "0100");
  CHECK(codec::to_hex(*d->tpdu.called_tsap()) == "0102");
  CHECK(d->anomalies.empty());
}

TEST_CASE("peer: connect splits a large TSDU into DTs of the negotiated size and checks the echo", "[peer]") {
  t::FrameLog seen;
  t::ResponderConfig cfg;
  cfg.reserved = 0x00;
  cfg.log = &seen;
  TestServer server(t::responder_handler(cfg));
  REQUIRE(server.ok());
  const auto r = run_connect(server.port(), {"--strict", "--data-size", "5000"});
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  CHECK(contains(r.out, "sent 5000 bytes in 3 DTs"));
  CHECK(contains(r.out, "DT echoed ok (5000 bytes)"));
  REQUIRE(server.wait_finished(1));
  const auto frames = seen.frames();
  REQUIRE(frames.size() == 4);  // CR + 2045 + 2045 + 910
  CHECK(frames[1].size() == 4 + 2048);  // the TPDU size bounds the TPDU; the TPKT header comes on top
  CHECK(frames[1][6] == 0x00);  // no EOT
  CHECK(frames[3].size() == 910 + 7);
  CHECK(frames[3][6] == 0x80);  // EOT on the last
  CHECK(server.handler_errors().empty());
}

TEST_CASE("peer: connect fails cleanly on a refused connection, a silent peer, and a bad command line", "[peer]") {
  SECTION("refused: exit 2, one line on stderr") {
    // A bound socket that does not listen: connecting to it is refused, and no one else can take the port.
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    const auto sa = t::make_sockaddr("127.0.0.1", 0);
    REQUIRE(::bind(fd, sa->get(), sa->length) == 0);
    t::SockAddr bound;
    bound.length = sizeof bound.storage;
    REQUIRE(::getsockname(fd, bound.get(), &bound.length) == 0);
    const auto r = run_connect(t::address_port(bound.get()));
    ::close(fd);
    INFO(r.out << r.err);
    CHECK(r.exit_code == 2);
    CHECK(count_lines(r.err) == 1);
    CHECK(contains(r.err, "cannot connect to 127.0.0.1:"));
    CHECK(contains(r.err, "Connection refused"));
  }
  SECTION("no CC before the timeout: exit 2") {
    TestServer server([](Conn& c) { c.wait_eof(Millis(30000)); });
    REQUIRE(server.ok());
    const auto r = run_connect(server.port(), {"--timeout", "300ms"});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 2);
    CHECK(count_lines(r.err) == 1);
    CHECK(contains(r.err, "timeout"));
    CHECK(server.wait_finished(1));  // the peer gave up and closed
  }
  SECTION("peer closes before the CC: exit 2") {
    TestServer server([](Conn& c) { c.recv_frame(); });
    REQUIRE(server.ok());
    const auto r = run_connect(server.port());
    INFO(r.out << r.err);
    CHECK(r.exit_code == 2);
    CHECK(contains(r.err, "connection closed by"));
  }
  SECTION("an echo that differs: exit 5") {
    TestServer server([](Conn& c) {
      auto cr = c.recv_frame();
      if (!cr) return;
      c.send_all(codec::Bytes(t::make_cc("A", "B")));
      if (!c.recv_frame()) return;
      c.send_all(codec::Bytes(t::make_dt("something else")));
      c.wait_eof();
    });
    REQUIRE(server.ok());
    const auto r = run_connect(server.port());
    INFO(r.out << r.err);
    CHECK(r.exit_code == 5);
    CHECK(contains(r.err, "echo differs"));
  }
  SECTION("usage errors: exit 64") {
    CHECK(run_connect(1, {"--timeout", "soon"}).exit_code == 64);
    CHECK(run_connect(1, {"--calling", "hex:zz"}).exit_code == 64);
    CHECK(run_connect(1, {"--data", "00", "--data-size", "3"}).exit_code == 64);
  }
}

// ---------------------------------------------------------------------------
// Frame builders

TEST_CASE("peers.h: frame builders encode through the codec and match the shared vectors", "[peers][vectors]") {
  // The vendor CC rebuilt from its fields is V1; with reserved 0 it is V2.
  CHECK(t::make_cc("SWISSLIFETSAP", "EXCHANGETSAP1", 0x0B, 0x01CA, 0x0029, 0x11) == t::vendor_cc());
  CHECK(t::make_cc("SWISSLIFETSAP", "EXCHANGETSAP1", 0x0B, 0x01CA, 0x0029, 0x00) == t::vendor_cc_repaired());
  CHECK(t::vendor_cc()[1] == 0x11);

  // A CC answering a CR keeps the CR's parameter order (V3: C0 C2 C1).
  const ByteVec v3 = t::vector_bytes("V3");
  const auto cr = codec::decode_frame(codec::Bytes(v3));
  REQUIRE(cr.ok());
  const ByteVec reply = t::make_cc_reply(cr->tpdu, 0x0005, 0x00);
  const auto cc = codec::decode_frame(codec::Bytes(reply));
  REQUIRE(cc.ok());
  REQUIRE(cc->tpdu.params.size() == 3);
  CHECK(cc->tpdu.params[0].code == 0xC0);
  CHECK(cc->tpdu.params[1].code == 0xC2);
  CHECK(cc->tpdu.params[2].code == 0xC1);
  CHECK(cc->tpdu.dst_ref == cr->tpdu.src_ref);
  CHECK(cc->tpdu.src_ref == 0x0005);

  CHECK(t::make_dt("", true) == t::vector_bytes("V16a"));
  CHECK(t::make_dr(0x80, 0x0001, 0x0000) == t::vector_bytes("V14"));
  const auto dt = codec::decode_frame(codec::Bytes(t::make_dt("abc", false)));
  REQUIRE(dt.ok());
  CHECK(dt->tpdu.eot == false);
  CHECK(dt->tpdu.user_data.size() == 3);
  CHECK_THROWS_AS(t::make_cr(std::string(300, 'x'), "B"), std::length_error);
}

// ---------------------------------------------------------------------------
// Conn

TEST_CASE("peers.h: recv_frame reassembles split input and keeps what follows", "[peers][conn]") {
  SECTION("header split across two reads (N6)") {
    Pair p;
    const auto& n6 = t::find_vector(t::shared_vectors(), "N6");
    REQUIRE(n6.segments.size() == 2);
    p.write(n6.segments[0]);
    CHECK_FALSE(p.reader.recv_frame(Millis(0)));  // nothing complete yet; nothing lost either
    CHECK(p.reader.error() == "timeout");
    CHECK(p.reader.buffered() == 3);
    p.write(n6.segments[1]);
    const auto f = p.reader.recv_frame(Millis(1000));
    REQUIRE(f);
    CHECK(*f == n6.bytes());
    CHECK(p.reader.buffered() == 0);
  }
  SECTION("one byte per write (V1)") {
    Pair p;
    const ByteVec v1 = t::vendor_cc();
    for (std::size_t i = 0; i + 1 < v1.size(); ++i) {
      p.write({v1[i]});
      REQUIRE_FALSE(p.reader.recv_frame(Millis(0)));
    }
    p.write({v1.back()});
    const auto f = p.reader.recv_frame(Millis(1000));
    REQUIRE(f);
    CHECK(*f == v1);
  }
  SECTION("two frames in one read (N5), then raw bytes after them") {
    Pair p;
    ByteVec stream = t::vector_bytes("N5");
    stream.push_back(0xAB);
    p.write(stream);
    const auto a = p.reader.recv_frame(Millis(1000));
    const auto b = p.reader.recv_frame(Millis(1000));
    REQUIRE(a);
    REQUIRE(b);
    CHECK(codec::to_hex(*a) == "0300000702F000");
    CHECK(codec::to_hex(*b) == "0300000902F080DEAD");
    CHECK(p.reader.recv_exact(1, Millis(1000)) == ByteVec{0xAB});
  }
  SECTION("not a TPKT: error named, bytes kept") {
    Pair p;
    p.write(t::vector_bytes("V16c"));  // version 4
    CHECK_FALSE(p.reader.recv_frame(Millis(1000)));
    CHECK(p.reader.error() == "tpkt-bad-version");
    CHECK(p.reader.take_buffered() == t::vector_bytes("V16c"));
  }
  SECTION("EOF in the middle of a frame") {
    Pair p;
    p.write(t::vector_bytes("V16e"));  // declares 8, has 7
    ::close(p.writer);
    p.writer = -1;
    CHECK_FALSE(p.reader.recv_frame(Millis(1000)));
    CHECK(p.reader.error() == "eof");
    CHECK(p.reader.eof_seen());
    CHECK(p.reader.buffered() == 7);
  }
}

TEST_CASE("peers.h: TestServer and Conn carry frames split and coalesced", "[peers][conn]") {
  t::FrameLog seen;
  t::ResponderConfig cfg;
  cfg.log = &seen;
  TestServer server(t::responder_handler(cfg));
  REQUIRE(server.ok());
  Conn c = t::connect_to("127.0.0.1", server.port());
  REQUIRE(c.valid());
  CHECK(server.wait_accepted(1));
  CHECK(c.peer_address() == "127.0.0.1:" + std::to_string(server.port()));

  // CR and two DTs coalesced into one write.
  const ByteVec cr = t::make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  const ByteVec dt1 = t::make_dt("first", false);
  const ByteVec dt2 = t::make_dt("second", true);
  ByteVec all = cr;
  all.insert(all.end(), dt1.begin(), dt1.end());
  all.insert(all.end(), dt2.begin(), dt2.end());
  REQUIRE(c.send_all(codec::Bytes(all)));
  const auto cc = c.recv_frame();
  REQUIRE(cc);
  CHECK(*cc == t::vendor_cc());
  CHECK(c.recv_frame() == dt1);
  CHECK(c.recv_frame() == dt2);
  REQUIRE(seen.wait_size(3));
  CHECK(seen.frames()[0] == cr);

  // A frame split at every byte boundary (the server frames it whole).
  const ByteVec dt3 = t::make_dt("third", true);
  c.set_nodelay();
  for (const std::uint8_t b : dt3) REQUIRE(c.send_all(codec::Bytes(&b, 1)));
  CHECK(c.recv_frame() == dt3);

  // recv_exact/recv_some see the raw stream.
  REQUIRE(c.send_all(codec::Bytes(dt1)));
  const auto head = c.recv_exact(4);
  REQUIRE(head);
  CHECK(*head == ByteVec(dt1.begin(), dt1.begin() + 4));
  const auto tail = c.recv_exact(dt1.size() - 4);
  REQUIRE(tail);
  CHECK(*tail == ByteVec(dt1.begin() + 4, dt1.end()));

  c.shutdown_write();  // the responder sees EOF and returns
  CHECK(c.wait_eof());
  CHECK_FALSE(c.reset_seen());
  CHECK(server.wait_finished(1));
  CHECK(server.handler_errors().empty());
}

TEST_CASE("peers.h: TestServer records the source address the client used", "[peers][addr]") {
  SECTION("127.0.0.2 -> 127.0.0.3") {
    TestServer server(t::echo_handler(), "127.0.0.3");
    REQUIRE(server.ok());
    Conn c = t::connect_to("127.0.0.3", server.port(), Millis(5000), "127.0.0.2");
    INFO(c.error());
    REQUIRE(c.valid());
    CHECK(c.local_ip() == "127.0.0.2");
    REQUIRE(server.wait_accepted(1));
    CHECK(server.peer_ips() == std::vector<std::string>{"127.0.0.2"});
    CHECK(server.peer_addresses() == std::vector<std::string>{c.local_address()});
    REQUIRE(c.send_all(std::string_view("ping")));
    CHECK(c.recv_exact(4) == t::ascii("ping"));
  }
  SECTION("::1") {
    TestServer server(t::echo_handler(), "::1");
    if (!server.ok()) {
      WARN("skipped: no IPv6 loopback here (" << server.error() << ")");
      return;
    }
    Conn c = t::connect_to("::1", server.port());
    INFO(c.error());
    REQUIRE(c.valid());
    REQUIRE(server.wait_accepted(1));
    CHECK(server.peer_ips() == std::vector<std::string>{"::1"});
    CHECK(c.peer_address() == "[::1]:" + std::to_string(server.port()));
  }
  SECTION("a local address of the wrong family is refused") {
    Conn c = t::connect_to("127.0.0.1", 1, Millis(1000), "::1");
    CHECK_FALSE(c.valid());
    CHECK(contains(c.error(), "does not fit"));
  }
}

TEST_CASE("peers.h: a reset reaches the peer as a reset, a FIN as EOF", "[peers][conn]") {
  std::promise<std::pair<bool, bool>> result;  // (eof seen, by reset)
  auto got = result.get_future();
  TestServer server([&result](Conn& c) {
    const bool eof = c.wait_eof();
    result.set_value({eof, c.reset_seen()});
  });
  REQUIRE(server.ok());
  Conn c = t::connect_to("127.0.0.1", server.port());
  REQUIRE(c.valid());
  REQUIRE(server.wait_accepted(1));
  c.close_with_reset();
  CHECK_FALSE(c.valid());
  REQUIRE(got.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  const auto [eof, reset] = got.get();
  CHECK(eof);
  CHECK(reset);
}

TEST_CASE("peers.h: stopping a TestServer ends handlers blocked on their socket", "[peers]") {
  auto server = std::make_unique<TestServer>([](Conn& c) { c.recv_frame(Millis(std::chrono::hours(1))); });
  REQUIRE(server->ok());
  Conn c = t::connect_to("127.0.0.1", server->port());
  REQUIRE(c.valid());
  REQUIRE(server->wait_accepted(1));
  CHECK(server->finished_count() == 0);
  server->stop();  // shuts the connection down and joins: returns only once the handler did
  CHECK(server->finished_count() == 1);
  CHECK(c.wait_eof());
  server.reset();
}

// ---------------------------------------------------------------------------
// BackgroundProcess / ProxyProcess (against a stand-in for isoproxy)

TEST_CASE("proxy_process.h: ProxyProcess writes the config, finds listeners, signals and reaps", "[proxy-process]") {
  const auto dir = scratch_dir("fake-proxy");
  const auto script = dir / "fake-isoproxy";
  {
    std::ofstream out(script);
    // Prints what a real isoproxy prints on stderr, and a close line on SIGTERM.
    // The trap is set before anything is printed: the test signals as soon as it sees the lines.
    out << "#!/bin/sh\n"
           "[ \"$1\" = run ] && [ \"$2\" = -c ] || { echo \"bad args: $*\" >&2; exit 64; }\n"
           "sleep 1000 </dev/null >/dev/null 2>&1 &\n"
           "trap 'kill $!; echo \"info [S1] close reason=shutdown peer=\\\"a b\\\" bytes_in=44\" >&2; exit 0' TERM\n"
           "echo \"config says: $(cat \"$3\")\" >&2\n"
           "echo \"extra: $4\" >&2\n"
           "echo \"info listening on 127.0.0.1:40123 (listener demo)\" >&2\n"
           "echo \"info listening on [::1]:40124 (listener v6)\" >&2\n"
           "wait\n";
  }
  std::filesystem::permissions(script, std::filesystem::perms::owner_all);

  std::optional<std::filesystem::path> config;
  {
    t::ProxyProcess proxy("[listener.demo]\nlisten = \"127.0.0.1:0\"", {"--verbose"}, script.string());
    INFO(proxy.error());
    REQUIRE(proxy.started());
    config = proxy.config_path();
    CHECK(proxy.listen_port("demo") == 40123);
    CHECK(proxy.listen_port("v6") == 40124);
    CHECK(proxy.listen_port(0) == 40123);
    CHECK(proxy.listen_port(1) == 40124);
    CHECK(proxy.wait_listening(Millis(5000), 2) == 40123);
    const auto ls = proxy.listeners();
    REQUIRE(ls.size() == 2);
    CHECK(ls[1].address == "[::1]");
    CHECK(ls[1].name == "v6");
    // The config as written, with the [admin] table ProxyProcess adds (an ephemeral port).
    CHECK(proxy.wait_for_line(std::regex(R"(config says: \[admin\])")));
    CHECK(proxy.wait_for_line(std::regex(R"(^\[listener\.demo\]$)")));
    CHECK(proxy.wait_for_line(std::regex("^extra: --verbose$")));
    CHECK(proxy.open_fds().value_or(0) >= 3);
    CHECK(proxy.rss_kib().value_or(0) > 0);

    CHECK(proxy.signal(SIGTERM));
    CHECK(proxy.wait_exit().value_or(-1) == 0);
    CHECK_FALSE(proxy.running());
    CHECK_FALSE(proxy.signal(SIGTERM));  // reaped: never signals a reused pid
    const auto close = proxy.wait_for_line(std::regex("close reason="));
    REQUIRE(close);
    const auto fields = t::parse_fields(*close);
    CHECK(fields.at("reason") == "shutdown");
    CHECK(fields.at("peer") == "a b");
    CHECK(fields.at("bytes_in") == "44");
    CHECK(proxy.open_fds() == std::nullopt);
  }
  CHECK_FALSE(std::filesystem::exists(*config));  // the temp config went with the object
  std::filesystem::remove_all(dir);
}

TEST_CASE("proxy_process.h: BackgroundProcess reports exits, gives up on lines that cannot come, kills at destruction",
          "[proxy-process]") {
  SECTION("exit status and early return") {
    BackgroundProcess p({"/bin/sh", "-c", "echo out; echo err >&2; exit 7"});
    REQUIRE(p.started());
    CHECK(p.wait_exit().value_or(-1) == 7);
    CHECK(p.lines(Out::kOut) == std::vector<std::string>{"out"});
    CHECK(p.lines(Out::kErr) == std::vector<std::string>{"err"});
    // The child is gone and its output drained: the wait returns at once, not at the deadline.
    const auto start = std::chrono::steady_clock::now();
    CHECK_FALSE(p.wait_for_line(Out::kErr, std::regex("never"), Millis(60000)));
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(30));
  }
  SECTION("killed by a signal: 128 + signal") {
    BackgroundProcess p({"/bin/sh", "-c", "echo ready; exec sleep 1000"});  // stdin is /dev/null: cat would end at once
    REQUIRE(p.wait_for_line(Out::kOut, std::regex("^ready$")));
    CHECK(p.signal(SIGKILL));
    CHECK(p.wait_exit().value_or(-1) == 128 + SIGKILL);
  }
  SECTION("a last line without a newline still counts") {
    BackgroundProcess p({"/bin/sh", "-c", "printf 'a\\nb'"});
    CHECK(p.wait_exit().value_or(-1) == 0);
    CHECK(p.lines(Out::kOut) == std::vector<std::string>{"a", "b"});
  }
  SECTION("the destructor kills and reaps a running child") {
    pid_t pid = -1;
    {
      BackgroundProcess p({"/bin/sh", "-c", "trap '' TERM; echo up; exec sleep 1000"});
      REQUIRE(p.wait_for_line(Out::kOut, std::regex("^up$")));
      pid = p.pid();
      CHECK(p.running());
    }
    errno = 0;
    CHECK(::kill(pid, 0) == -1);  // gone, and reaped (a zombie would still accept signal 0)
    CHECK(errno == ESRCH);
  }
  SECTION("a program that does not exist") {
    BackgroundProcess p({"/nonexistent/isoproxy"});
    CHECK_FALSE(p.started());
    CHECK(contains(p.spawn_error(), "/nonexistent/isoproxy"));
    CHECK_FALSE(p.wait_exit(Millis(10)));
  }
}
