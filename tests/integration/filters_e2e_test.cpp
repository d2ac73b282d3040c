// Filters of the chain end to end, through the real binary and real sockets.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <mutex>
#include <regex>
#include <cstring>
#include <sstream>
#include <thread>

#include "codec/text.h"
#include "codec/x224.h"
#include "pcap_reader.h"
#include <nlohmann/json.hpp>

#include "support/http.h"
#include "support/peers.h"
#include "support/process.h"
#include "support/proxy_process.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;
namespace codec = isoproxy::codec;

namespace {

std::filesystem::path make_temp_dir(const std::string& tag) {
  auto d = std::filesystem::temp_directory_path() / ("isoproxy-" + tag + "-" + std::to_string(getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

// A listener "acl" toward 127.0.0.1:`upstream_port` whose tsap-acl allows
// the called TSAP "OK" only.
std::string acl_config(std::uint16_t upstream_port) {
  return "[[listener]]\nname = \"acl\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
         std::to_string(upstream_port) + "\"\nfilters = [\"acl\"]\n\n" +
         "[filter.acl]\nkind = \"tsap-acl\"\ndefault = \"deny\"\n[[filter.acl.rule]]\naction = \"allow\"\n"
         "called = [\"OK\"]\n";
}

// An upstream for the ACL tests: answers each CR with a CC, echoes DTs if
// asked, and keeps every octet each connection brought, framed or not.
struct RecordingUpstream {
  explicit RecordingUpstream(bool echo_dt)
      : server([this, echo_dt](Conn& c) {
          ByteVec all;
          for (;;) {
            auto f = c.recv_frame(10000ms);
            if (!f) break;
            all.insert(all.end(), f->begin(), f->end());
            auto d = codec::decode_frame(codec::Bytes(*f));
            if (d && d->tpdu.type == codec::TpduType::kCR) {
              if (!c.send_all(codec::Bytes(make_cc_reply(d->tpdu, 0x0029, 0x00)))) break;
            } else if (echo_dt && d && d->tpdu.type == codec::TpduType::kDT) {
              if (!c.send_all(codec::Bytes(*f))) break;
            }
          }
          const ByteVec rest = c.take_buffered();
          all.insert(all.end(), rest.begin(), rest.end());
          std::lock_guard<std::mutex> lk(mu);
          received.push_back(std::move(all));
        }) {}
  std::vector<ByteVec> connections() {
    std::lock_guard<std::mutex> lk(mu);
    return received;
  }
  std::mutex mu;
  std::vector<ByteVec> received;
  TestServer server;  // last: its thread uses the members above
};

}  // namespace

TEST_CASE("trace writes a pcap of both directions that tshark dissects as COTP", "[trace][integration]") {
  TestServer up(responder_handler({.reserved = 0x11}));
  REQUIRE(up.ok());
  const auto dir = make_temp_dir("trace");
  // trace first: it records the client's frames as sent and the upstream's after the repair.
  ProxyProcess proxy("[[listener]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                     std::to_string(up.port()) + "\"\nfilters = [\"capture\", \"reserved\"]\n\n" +
                     "[filter.capture]\nkind = \"trace\"\ndirectory = \"" + dir.string() + "\"\n\n" +
                     "[filter.reserved]\nkind = \"tpkt-reserved\"\n");
  auto port = proxy.listen_port("t", 10s);
  REQUIRE(port);
  {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.valid());
    REQUIRE(c.send_all(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
    auto cc = c.recv_frame(5s);
    REQUIRE(cc);
    CHECK((*cc)[1] == 0x00);  // repaired
    const ByteVec dt = make_dt("traced data");
    REQUIRE(c.send_all(dt));
    REQUIRE(c.recv_exact(dt.size(), 5s));
  }
  REQUIRE(proxy.wait_for_line(std::regex("close reason="), 10s));
  REQUIRE(proxy.signal(SIGTERM));
  REQUIRE(proxy.wait_exit(10s) == 0);

  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) files.push_back(e.path());
  REQUIRE(files.size() == 1);

  // Our own reader: both directions, the real addresses.
  std::map<int, std::vector<std::uint8_t>> bytes;
  auto summary = isoproxy::read_pcap_streams(
      files[0].string(), up.port(),
      [&](const isoproxy::PcapChunk& ch) {
        auto& b = bytes[static_cast<int>(ch.direction)];
        b.insert(b.end(), ch.bytes.begin(), ch.bytes.end());
      },
      [](const isoproxy::PcapNotice&) {});
  REQUIRE(summary.ok());
  REQUIRE(summary->streams.size() == 1);
  CHECK(summary->streams[0].server == "127.0.0.1:" + std::to_string(up.port()));
  CHECK(bytes[0].size() == make_cr("SWISSLIFETSAP", "EXCHANGETSAP1").size() + make_dt("traced data").size());
  CHECK(bytes[1].size() == bytes[0].size());

  if (!on_path("tshark")) {
    WARN("tshark is not installed: the Wireshark check of the trace is skipped");
  } else {
    auto ts = run_process({"/usr/bin/env", "tshark", "-n", "-r", files[0].string(), "-d",
                           "tcp.port==" + std::to_string(up.port()) + ",tpkt", "-Y", "cotp", "-T", "fields", "-E",
                           "separator=|", "-e", "tcp.dstport", "-e", "cotp.type", "-e", "cotp.src-tsap", "-e",
                           "cotp.dst-tsap", "-e", "tpkt.reserved"});
    INFO(ts.out << ts.err);
    REQUIRE(ts.exit_code == 0);
    std::vector<std::string> lines;
    std::istringstream in(ts.out);
    for (std::string l; std::getline(in, l);) lines.push_back(l);
    REQUIRE(lines.size() == 4);  // CR, CC, DT, DT
    const std::string to_up = std::to_string(up.port());
    CHECK(lines[0] == to_up + "|0x0e|SWISSLIFETSAP|EXCHANGETSAP1|0");
    CHECK(std::regex_match(lines[1], std::regex(R"(\d+\|0x0d\|SWISSLIFETSAP\|EXCHANGETSAP1\|0)")));
    CHECK(lines[2] == to_up + "|0x0f|||0");
    CHECK(std::regex_match(lines[3], std::regex(R"(\d+\|0x0f\|\|\|0)")));
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("trace: a reload that drops the filter completes its file, the closed sessions kept or not",
          "[trace][reload][integration]") {
  TestServer up(responder_handler({.reserved = 0x11}));
  REQUIRE(up.ok());
  const auto dir = make_temp_dir("trace-reload");
  const std::string listener = "[[listener]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                               std::to_string(up.port()) + "\"\n";
  // The default closed-session list (1000) keeps the traced session after it closed.
  ProxyProcess proxy(listener + "filters = [\"capture\"]\n\n[filter.capture]\nkind = \"trace\"\ndirectory = \"" +
                     dir.string() + "\"\n");
  auto port = proxy.listen_port("t", 10s);
  REQUIRE(port);
  const ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1"), dt = make_dt("traced data");
  {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(cr));
    REQUIRE(c.recv_frame(5s));
    REQUIRE(c.send_all(dt));
    REQUIRE(c.recv_exact(dt.size(), 5s));
  }
  REQUIRE(proxy.wait_for_line(std::regex("close reason="), 10s));
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) files.push_back(e.path());
  REQUIRE(files.size() == 1);
  // Which of the proxy's descriptors are open on the trace file.
  auto open_on_trace = [&] {
    int n = 0;
    const auto fds = std::filesystem::path("/proc") / std::to_string(proxy.pid()) / "fd";
    for (const auto& e : std::filesystem::directory_iterator(fds)) {
      std::error_code ec;
      if (std::filesystem::read_symlink(e.path(), ec) == files[0]) ++n;
    }
    return n;
  };
  CHECK(open_on_trace() == 1);
  // The trace goes: its file is closed then, with the process still running.
  REQUIRE(proxy.write_config(listener));
  REQUIRE(proxy.signal(SIGHUP));
  REQUIRE(proxy.wait_for_line(std::regex("reloaded "), 10s));
  CHECK(open_on_trace() == 0);
  std::map<int, std::size_t> bytes;
  auto summary = isoproxy::read_pcap_streams(
      files[0].string(), up.port(), [&](const isoproxy::PcapChunk& ch) { bytes[static_cast<int>(ch.direction)] += ch.bytes.size(); },
      [](const isoproxy::PcapNotice&) {});
  REQUIRE(summary.ok());
  CHECK(bytes[0] == cr.size() + dt.size());
  CHECK(bytes[1] == bytes[0]);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("tsap-rewrite end to end: a longer called TSAP upstream, the original back in the CC",
          "[rewrite][integration]") {
  // The upstream answers the CR it receives with a CC echoing its TSAPs.
  FrameLog upstream_frames;
  TestServer up(responder_handler({.reserved = 0x00, .log = &upstream_frames}));
  REQUIRE(up.ok());
  const auto dir = make_temp_dir("rewrite");
  ProxyProcess proxy("[[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                     std::to_string(up.port()) + "\"\nfilters = [\"rw\", \"capture\"]\n\n" +
                     "[filter.rw]\nkind = \"tsap-rewrite\"\n[[filter.rw.rule]]\nfield = \"called\"\n"
                     "from = \"MTA\"\nto = \"EXCHANGETSAP1-LONGER\"\n\n" +
                     "[filter.capture]\nkind = \"trace\"\ndirectory = \"" + dir.string() + "\"\n");
  auto port = proxy.listen_port("rw", 10s);
  REQUIRE(port);
  const ByteVec cr = make_cr("SWISSLIFETSAP", "MTA");
  ByteVec cc;
  {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.valid());
    REQUIRE(c.send_all(cr));
    auto got = c.recv_frame(5s);
    REQUIRE(got);
    cc = *got;
    const ByteVec dt = make_dt("after the rewrite");
    REQUIRE(c.send_all(dt));
    auto echo = c.recv_exact(dt.size(), 5s);
    REQUIRE(echo);
    CHECK(*echo == dt);
  }
  REQUIRE(proxy.wait_for_line(std::regex("close reason="), 10s));

  // The client's view: a well-formed CC naming the TSAP it asked for.
  auto ccd = codec::decode_frame(cc);
  REQUIRE(ccd.ok());
  CHECK(ccd->tpdu.type == codec::TpduType::kCC);
  REQUIRE(ccd->tpdu.called_tsap());
  CHECK(codec::tsap_text(*ccd->tpdu.called_tsap()).ascii == "MTA");
  CHECK(ccd->anomalies.empty());

  // The upstream's view: a well-formed CR with the longer TSAP, LI and length recomputed.
  const auto frames = upstream_frames.frames();
  REQUIRE(frames.size() >= 1);
  auto crd = codec::decode_frame(frames[0]);
  REQUIRE(crd.ok());
  CHECK(crd->tpdu.type == codec::TpduType::kCR);
  REQUIRE(crd->tpdu.called_tsap());
  CHECK(codec::tsap_text(*crd->tpdu.called_tsap()).ascii == "EXCHANGETSAP1-LONGER");
  const std::size_t grown = std::string("EXCHANGETSAP1-LONGER").size() - 3;
  CHECK(frames[0].size() == cr.size() + grown);
  CHECK(crd->header.length == cr.size() + grown);
  CHECK(crd->tpdu.li == codec::decode_frame(cr)->tpdu.li + grown);
  CHECK(codec::tsap_text(*crd->tpdu.calling_tsap()).ascii == "SWISSLIFETSAP");
  CHECK(proxy.count_lines(std::regex(R"(filters=.*rw\.rewritten-cr=1)")) == 1);
  CHECK(proxy.count_lines(std::regex(R"(filters=.*rw\.restored-cc=1)")) == 1);
  REQUIRE(proxy.signal(SIGTERM));
  REQUIRE(proxy.wait_exit(10s) == 0);

  // Wireshark agrees both frames are well-formed COTP (the trace sits after
  // the rewrite toward the upstream, before the restore toward the client).
  if (!on_path("tshark")) {
    WARN("tshark is not installed: the Wireshark check of the rewritten frames is skipped");
  } else {
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(dir)) files.push_back(e.path());
    REQUIRE(files.size() == 1);
    auto ts = run_process({"/usr/bin/env", "tshark", "-n", "-r", files[0].string(), "-d",
                           "tcp.port==" + std::to_string(up.port()) + ",tpkt", "-Y", "cotp.type == 0x0e || cotp.type == 0x0d",
                           "-T", "fields", "-E", "separator=|", "-e", "cotp.type", "-e", "cotp.dst-tsap", "-e",
                           "_ws.malformed", "-e", "_ws.expert"});
    INFO(ts.out << ts.err);
    REQUIRE(ts.exit_code == 0);
    CHECK(ts.out == "0x0e|EXCHANGETSAP1-LONGER||\n0x0d|EXCHANGETSAP1-LONGER||\n");
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("tsap-rewrite end to end: a CR the rewrite would take past max_frame goes unchanged",
          "[rewrite][integration]") {
  FrameLog upstream_frames;
  TestServer up(responder_handler({.reserved = 0x00, .log = &upstream_frames}));
  REQUIRE(up.ok());
  const ByteVec cr = make_cr("SWISSLIFETSAP", "MTA");
  // Room for the CR as sent, not for the 17 octets the rewrite adds.
  ProxyProcess proxy("[[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                     std::to_string(up.port()) + "\"\nmax_frame = " + std::to_string(cr.size() + 16) +
                     "\nfilters = [\"rw\"]\n\n[filter.rw]\nkind = \"tsap-rewrite\"\n[[filter.rw.rule]]\n"
                     "field = \"called\"\nfrom = \"MTA\"\nto = \"EXCHANGETSAP1-LONGER\"\n");
  auto port = proxy.listen_port("rw", 10s);
  REQUIRE(port);
  INFO(proxy.text());
  {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(cr));
    REQUIRE(c.recv_frame(5s));
  }
  REQUIRE(proxy.wait_for_line(std::regex("close reason="), 10s));
  const auto frames = upstream_frames.frames();
  REQUIRE(frames.size() >= 1);
  CHECK(frames[0] == cr);
  CHECK(proxy.count_lines(std::regex(R"(filters=.*rw\.failed=1)")) == 1);
  CHECK(proxy.count_lines(std::regex("rw: CR left unchanged: the frame would be " + std::to_string(cr.size() + 17) +
                                     " octets, over the listener's max_frame")) == 1);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("tsap-acl end to end: a refused CR gets a DR, an allowed one its CC, nothing passes unjudged",
          "[acl][integration]") {
  // The upstream answers CRs with a CC and echoes DTs; it keeps every octet
  // each connection brought, framed or not.
  RecordingUpstream recording(/*echo_dt=*/true);
  TestServer& up = recording.server;
  REQUIRE(up.ok());
  // malformed and non_rfc1006 are left at "pass": the ACL must hold anyway.
  ProxyProcess proxy(acl_config(up.port()));
  auto port = proxy.listen_port("acl", 10s);
  REQUIRE(port);
  INFO(proxy.text());
  const ByteVec allowed_cr = make_cr("CALLING", "OK");
  const ByteVec denied_cr = make_cr("CALLING", "BAD");
  const ByteVec dt = make_dt("allowed");
  ByteVec expect_upstream;  // all the upstream may receive

  // Sends `bytes`, then reads until the proxy closes: what the client got.
  auto attempt = [&](const ByteVec& bytes) {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.valid());
    REQUIRE(c.send_all(codec::Bytes(bytes)));
    CHECK(c.wait_eof(10000ms));
    return c.take_buffered();
  };

  SECTION("allowed: CC, and data both ways") {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(codec::Bytes(allowed_cr)));
    auto cc = c.recv_frame(5s);
    REQUIRE(cc);
    CHECK(codec::decode_frame(codec::Bytes(*cc))->tpdu.type == codec::TpduType::kCC);
    REQUIRE(c.send_all(codec::Bytes(dt)));
    CHECK(c.recv_exact(dt.size(), 5s) == dt);
    c.shutdown_write();
    CHECK(c.wait_eof(10000ms));
    CHECK(proxy.wait_for_line(std::regex(R"(close reason=client-closed .*filters=acl\.allowed=1)"), 10s));
    expect_upstream = allowed_cr;
    expect_upstream.insert(expect_upstream.end(), dt.begin(), dt.end());
  }
  SECTION("refused: a DR with the reason, and the close") {
    const ByteVec got = attempt(denied_cr);
    auto dr = codec::decode_frame(codec::Bytes(got));
    REQUIRE(dr.ok());
    CHECK(dr->tpdu.type == codec::TpduType::kDR);
    CHECK(dr->tpdu.reason == std::uint8_t{3});
    CHECK(proxy.wait_for_line(std::regex(R"(close reason="?acl-denied: default)"), 10s));
    // Refused, it never reached the upstream: not even a TCP connection.
    CHECK(up.accepted_count() == 0);
  }
  SECTION("a frame that does not decode before the CR closes the session") {
    // A DT with LI 3 (class 0 DTs have LI 2), then a CR the ACL refuses.
    ByteVec bytes = {0x03, 0x00, 0x00, 0x08, 0x03, 0xF0, 0x80, 0x00};
    bytes.insert(bytes.end(), denied_cr.begin(), denied_cr.end());
    CHECK(attempt(bytes).empty());
    CHECK(proxy.wait_for_line(std::regex(R"(close reason="?malformed-frame: .*\(no CR allowed yet\))"), 10s));
    CHECK(up.accepted_count() == 0);
  }
  SECTION("a CR that does not decode closes the session") {
    // A stray octet inside the header: LI and TPKT length count it.
    ByteVec bad = denied_cr;
    bad.push_back(0x00);
    bad[3] = static_cast<std::uint8_t>(bad[3] + 1);
    bad[4] = static_cast<std::uint8_t>(bad[4] + 1);
    REQUIRE_FALSE(codec::decode_frame(codec::Bytes(bad)).ok());
    CHECK(attempt(bad).empty());
    CHECK(proxy.wait_for_line(std::regex(R"(close reason="?malformed-frame: .*\(no CR allowed yet\))"), 10s));
  }
  SECTION("a CR in the data phase is judged too, pass-through or not") {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(codec::Bytes(allowed_cr)));
    auto cc = c.recv_frame(5s);
    REQUIRE(cc);
    // Data both ways: the data phase has begun (pass-through would splice it).
    REQUIRE(c.send_all(codec::Bytes(dt)));
    CHECK(c.recv_exact(dt.size(), 5s) == dt);
    REQUIRE(c.send_all(codec::Bytes(denied_cr)));
    auto dr = c.recv_frame(5s);
    REQUIRE(dr);
    auto decoded = codec::decode_frame(codec::Bytes(*dr));
    REQUIRE(decoded.ok());
    CHECK(decoded->tpdu.type == codec::TpduType::kDR);
    CHECK(c.wait_eof(10000ms));
    CHECK(proxy.wait_for_line(std::regex(R"(close reason="?acl-denied: default.*filters=acl\.allowed=1,acl\.denied=1)"), 10s));
    expect_upstream = allowed_cr;
    expect_upstream.insert(expect_upstream.end(), dt.begin(), dt.end());
  }
  SECTION("a frame that does not decode after the allowed CR closes the session, not relayed raw") {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(codec::Bytes(allowed_cr)));
    REQUIRE(c.recv_frame(5s));
    ByteVec bytes = {0x03, 0x00, 0x00, 0x08, 0x03, 0xF0, 0x80, 0x00};  // a DT with LI 3
    bytes.insert(bytes.end(), denied_cr.begin(), denied_cr.end());
    REQUIRE(c.send_all(codec::Bytes(bytes)));
    CHECK(c.wait_eof(10000ms));
    CHECK(c.take_buffered().empty());
    CHECK(proxy.wait_for_line(std::regex(R"(close reason="?malformed-frame: .*\(a filter judges every CR\))"), 10s));
    expect_upstream = allowed_cr;
  }
  SECTION("a CR concatenated after an ER is not relayed, before the CR or after it") {
    // An ER (LI 4) whose TPKT goes on with the refused CR: an upstream that
    // reads on after a TPDU without user data (as Wireshark does) would see it.
    const ByteVec er = {0x04, 0x70, 0x00, 0x00, 0x00};
    ByteVec er_cr = {0x03, 0x00, 0x00, 0x00};
    er_cr.insert(er_cr.end(), er.begin(), er.end());
    er_cr.insert(er_cr.end(), denied_cr.begin() + 4, denied_cr.end());
    er_cr[3] = static_cast<std::uint8_t>(er_cr.size());
    REQUIRE(codec::decode_frame(codec::Bytes(er_cr)).ok());
    CHECK(attempt(er_cr).empty());
    CHECK(proxy.wait_for_line(std::regex(R"re(close reason="malformed-frame: a CR concatenated after a ER \(no CR allowed yet\)")re"), 10s));
    CHECK(up.accepted_count() == 0);
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(codec::Bytes(allowed_cr)));
    REQUIRE(c.recv_frame(5s));
    REQUIRE(c.send_all(codec::Bytes(er_cr)));
    CHECK(c.wait_eof(10000ms));
    CHECK(c.take_buffered().empty());
    CHECK(proxy.wait_for_line(std::regex(R"re(close reason="malformed-frame: a CR concatenated after a ER \(a filter judges every CR\)")re"), 10s));
    expect_upstream = allowed_cr;
  }
  SECTION("a client that closes inside a CR: none of it is relayed") {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(codec::Bytes(denied_cr).first(denied_cr.size() - 1)));
    c.shutdown_write();
    CHECK(c.wait_eof(10000ms));
    CHECK(proxy.wait_for_line(std::regex(R"(close reason="client-closed: inside its first frame, before a CR was allowed")"), 10s));
    CHECK(up.accepted_count() == 0);
  }
  SECTION("a stream that is not RFC 1006 is closed, not passed raw") {
    const std::string text = "GET / HTTP/1.0\r\n\r\n";
    ByteVec bytes(text.begin(), text.end());
    bytes.insert(bytes.end(), denied_cr.begin(), denied_cr.end());
    CHECK(attempt(bytes).empty());
    CHECK(proxy.wait_for_line(std::regex(R"(close reason="?not-rfc1006: .*\(no CR allowed yet\))"), 10s));
    CHECK(up.accepted_count() == 0);
  }

  REQUIRE(proxy.signal(SIGTERM));
  REQUIRE(proxy.wait_exit(10s) == 0);
  REQUIRE(up.wait_finished(up.accepted_count(), 10000ms));
  up.stop();
  // The upstream saw the allowed CR and its DT, and nothing of the others.
  ByteVec all;
  for (const auto& r : recording.connections()) all.insert(all.end(), r.begin(), r.end());
  CHECK(all == expect_upstream);
}

TEST_CASE("tsap-acl: frames before the CR wait for it up to high_water and past it close the session",
          "[acl][integration]") {
  // The upstream keeps every octet each connection brought and answers a CR
  // with a CC.
  RecordingUpstream recording(/*echo_dt=*/false);
  TestServer& up = recording.server;
  REQUIRE(up.ok());
  // No handshake_timeout: before the fix, a client past high water stalled for ever.
  std::string config = acl_config(up.port());
  const std::string filters_line = "filters = [\"acl\"]\n";
  config.insert(config.find(filters_line) + filters_line.size(),
                "high_water = \"4KiB\"\nlow_water = \"1KiB\"\nhandshake_timeout = \"0s\"\n");
  ProxyProcess proxy(config);
  auto port = proxy.listen_port("acl", 10s);
  REQUIRE(port);
  INFO(proxy.text());
  const ByteVec dt = make_dt(std::string(3000, 'd'));  // 3007 octets: two pass high water
  // The client gets its CC and closes; the one upstream connection got `expect`, all of it.
  auto allowed = [&](Conn& c, const ByteVec& expect) {
    auto cc = c.recv_frame(5s);
    REQUIRE(cc);
    CHECK(codec::decode_frame(codec::Bytes(*cc))->tpdu.type == codec::TpduType::kCC);
    c.shutdown_write();
    CHECK(c.wait_eof(10000ms));
    REQUIRE(up.wait_finished(1, 10000ms));
    const auto received = recording.connections();
    REQUIRE(received.size() == 1);
    CHECK(received[0] == expect);
  };

  SECTION("under high water: relayed after the allowed CR, in order") {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(codec::Bytes(dt)));
    const ByteVec cr = make_cr("CALLING", "OK");
    REQUIRE(c.send_all(codec::Bytes(cr)));
    ByteVec expect = dt;
    expect.insert(expect.end(), cr.begin(), cr.end());
    allowed(c, expect);
  }
  SECTION("past high water within a read that brings the CR: allowed, all relayed") {
    // The second DT is completed by the read that also brings the CR: the
    // frames cross high water inside it, and the CR after them opens the way.
    const auto aport = admin_port(proxy);
    REQUIRE(aport);
    Conn c = connect_to("127.0.0.1", *port);
    ByteVec first = dt;
    first.insert(first.end(), dt.begin(), dt.begin() + 1000);
    REQUIRE(c.send_all(codec::Bytes(first)));
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    bool held = false;
    while (!held && std::chrono::steady_clock::now() < deadline) {
      const auto s = nlohmann::json::parse(http(*aport, "GET", "/sessions").body)["sessions"];
      held = s.size() == 1 && s[0]["to_upstream"]["held_bytes"] == 1000;
      if (!held) std::this_thread::sleep_for(5ms);
    }
    REQUIRE(held);
    const ByteVec cr = make_cr("CALLING", "OK");
    ByteVec rest(dt.begin() + 1000, dt.end());
    rest.insert(rest.end(), cr.begin(), cr.end());
    REQUIRE(c.send_all(codec::Bytes(rest)));
    ByteVec expect = dt;
    expect.insert(expect.end(), dt.begin(), dt.end());
    expect.insert(expect.end(), cr.begin(), cr.end());
    allowed(c, expect);
  }
  SECTION("past high water: closed at once, the upstream never connected") {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(codec::Bytes(dt)));
    REQUIRE(c.send_all(codec::Bytes(dt)));
    CHECK(c.wait_eof(10000ms));
    CHECK(c.take_buffered().empty());
    CHECK(proxy.wait_for_line(
        std::regex(R"re(close reason="no-cr: 6014 octets before a CR was allowed, over high_water \(4KiB\)".* c2u_bytes=6014 )re"),
        10s));
    CHECK(up.accepted_count() == 0);
  }
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("tsap-acl after tsap-route: the route's upstream is connected only for a CR the ACL lets through",
          "[acl][route][integration]") {
  // The routing filter comes first and picks the upstream from the CR; the
  // ACL after it still decides whether that upstream hears of the client.
  TestServer up(responder_handler());
  REQUIRE(up.ok());
  const std::string upstream = "127.0.0.1:" + std::to_string(up.port());
  ProxyProcess proxy("[[listener]]\nname = \"ra\"\nlisten = \"127.0.0.1:0\"\nfilters = [\"route\", \"acl\"]\n\n"
                     "[filter.route]\nkind = \"tsap-route\"\ndefault = \"" + upstream + "\"\n\n"
                     "[filter.acl]\nkind = \"tsap-acl\"\ndefault = \"deny\"\n[[filter.acl.rule]]\naction = \"allow\"\n"
                     "called = [\"OK\"]\n");
  auto port = proxy.listen_port("ra", 10s);
  REQUIRE(port);
  INFO(proxy.text());
  {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(codec::Bytes(make_cr("CALLING", "BAD"))));
    CHECK(c.wait_eof(10000ms));
    const auto dr = codec::decode_frame(codec::Bytes(c.take_buffered()));
    REQUIRE(dr.ok());
    CHECK(dr->tpdu.type == codec::TpduType::kDR);
  }
  CHECK(proxy.wait_for_line(std::regex(R"(close reason="?acl-denied: default)"), 10s));
  CHECK(up.accepted_count() == 0);  // the route chose it; the ACL kept the client off it
  {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(codec::Bytes(make_cr("CALLING", "OK"))));
    auto cc = c.recv_frame(5s);
    REQUIRE(cc);
    CHECK(codec::decode_frame(codec::Bytes(*cc))->tpdu.type == codec::TpduType::kCC);
  }
  CHECK(proxy.wait_for_line(std::regex(R"(close reason=.* route=route/default )"), 10s));
  CHECK(up.accepted_count() == 1);
  {
    // Closed before any CR: what it waited for is the ACL's word, as no-cr says it.
    Conn c = connect_to("127.0.0.1", *port);
    c.shutdown_write();
    CHECK(c.wait_eof(10000ms));
  }
  CHECK(proxy.wait_for_line(std::regex(R"(close reason="client-closed: before a CR was allowed")"), 10s));
  CHECK(up.accepted_count() == 1);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("tsap-route: a first frame that is not a CR goes to the default route at once", "[route][integration]") {
  // No CR to route by: `default` takes the session, connected and relayed
  // on that first frame (no filter here judges CRs, so none is waited for).
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  ProxyProcess proxy("[[listener]]\nname = \"rd\"\nlisten = \"127.0.0.1:0\"\nfilters = [\"route\"]\n\n"
                     "[filter.route]\nkind = \"tsap-route\"\ndefault = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n");
  auto port = proxy.listen_port("rd", 10s);
  REQUIRE(port);
  INFO(proxy.text());
  Conn c = connect_to("127.0.0.1", *port);
  const ByteVec dt = make_dt("no CR first");
  REQUIRE(c.send_all(codec::Bytes(dt)));
  const auto echo = c.recv_exact(dt.size(), 5s);
  REQUIRE(echo);
  CHECK(*echo == dt);
  c.shutdown_write();
  CHECK(c.wait_eof(10000ms));
  CHECK(proxy.wait_for_line(std::regex(R"(close reason=client-closed .*route=route/default )"), 10s));
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("tsap-acl end to end: a malformed client frame behind backed-up data closes after the good frames are out",
          "[acl][integration]") {
  // The upstream reads slowly, so the proxy holds relayed frames in its own
  // queue (the kernel's buffers toward the upstream full) when it meets the
  // malformed frame: closing at once would drop them.
  std::mutex mu;
  ByteVec received;
  bool eof = false;
  TestServer up([&](Conn& c) {
    c.set_rcvbuf(64 * 1024);  // not smaller: see the backpressure test in relay_lifecycle_test.cpp
    ByteVec all;
    bool got_eof = false;
    const auto cr = c.recv_frame(10000ms);
    if (cr) {
      all = *cr;
      const auto d = codec::decode_frame(codec::Bytes(*cr));
      if (d && c.send_all(codec::Bytes(make_cc_reply(d->tpdu, 0x0029, 0x00)))) {
        const ByteVec early = c.take_buffered();
        all.insert(all.end(), early.begin(), early.end());
        std::vector<std::uint8_t> buf(16 * 1024);
        for (;;) {
          pollfd p{c.fd(), POLLIN, 0};
          if (::poll(&p, 1, 20000) <= 0) break;
          const ssize_t n = ::recv(c.fd(), buf.data(), buf.size(), 0);
          if (n <= 0) {
            got_eof = n == 0;
            break;
          }
          all.insert(all.end(), buf.begin(), buf.begin() + n);
          std::this_thread::sleep_for(2ms);  // the slow reader's pace (about 8 MB/s), not a wait
        }
      }
    }
    std::lock_guard<std::mutex> lk(mu);
    received = std::move(all);
    eof = got_eof;
  });
  REQUIRE(up.ok());
  ProxyProcess proxy(acl_config(up.port()));
  auto port = proxy.listen_port("acl", 10s);
  REQUIRE(port);
  const ByteVec allowed_cr = make_cr("CALLING", "OK");
  Conn c = connect_to("127.0.0.1", *port);
  REQUIRE(c.send_all(codec::Bytes(allowed_cr)));
  REQUIRE(c.recv_frame(5s));
  // 8 MiB of numbered DTs (more than the buffers toward the upstream, the
  // kernel's and high water, hold), then a DT with LI 3, which does not decode.
  ByteVec good;
  for (std::uint32_t i = 0; i < 1024; ++i) {
    ByteVec payload(8185, static_cast<std::uint8_t>(i));
    std::memcpy(payload.data(), &i, sizeof i);
    const ByteVec dt = make_dt(codec::Bytes(payload));
    good.insert(good.end(), dt.begin(), dt.end());
  }
  ByteVec bytes = good;
  const ByteVec malformed = {0x03, 0x00, 0x00, 0x08, 0x03, 0xF0, 0x80, 0x00};
  bytes.insert(bytes.end(), malformed.begin(), malformed.end());
  // The proxy sends the client nothing before it closes: one thread sends,
  // then reads. The send ends once the slow upstream has taken most of it.
  REQUIRE(c.send_all(codec::Bytes(bytes), 60000ms));
  CHECK(c.wait_eof(60000ms));
  REQUIRE(up.wait_finished(1, 30000ms));
  CHECK(proxy.wait_for_line(std::regex(R"(close reason="?malformed-frame: .*\(a filter judges every CR\))"), 10s));
  INFO(proxy.text());
  std::lock_guard<std::mutex> lk(mu);
  ByteVec expected = allowed_cr;
  expected.insert(expected.end(), good.begin(), good.end());
  const auto diff = std::mismatch(received.begin(), received.end(), expected.begin(), expected.end());
  INFO("upstream received " << received.size() << " octets of " << expected.size() << ", the first "
                            << (diff.first - received.begin()) << " as sent");
  CHECK(received.size() == expected.size());
  CHECK((diff.first == received.end() && diff.second == expected.end()));
  CHECK(eof);
}

TEST_CASE("filter log lines are bounded per session: a client repeating its CR does not flood the log",
          "[integration][log]") {
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  ProxyProcess proxy("[[listener]]\nname = \"f\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" + std::to_string(up.port()) +
                     "\"\nfilters = [\"reserved\"]\n\n[filter.reserved]\nkind = \"tpkt-reserved\"\ntpdu = [\"CR\"]\n");
  auto port = proxy.listen_port("f", 10s);
  REQUIRE(port);
  INFO(proxy.text());
  // 40 CRs with the reserved byte 0x11 in one connection, each repaired.
  ByteVec cr = make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  cr[1] = 0x11;
  ByteVec burst;
  for (int i = 0; i < 40; ++i) burst.insert(burst.end(), cr.begin(), cr.end());
  Conn c = connect_to("127.0.0.1", *port);
  REQUIRE(c.send_all(burst));
  auto back = c.recv_exact(burst.size(), 10s);  // the upstream echoes them: all went through the chain
  REQUIRE(back);
  c.close();
  auto close_line = proxy.wait_for_line(std::regex("close reason="), 10s);
  REQUIRE(close_line);
  CHECK(close_line->find("reserved.repaired=40") != std::string::npos);
  CHECK(proxy.count_lines(std::regex(R"(\[S1\] reserved: CR client-to-upstream: TPKT reserved byte 0x11 -> 0x00)")) == 16);
  CHECK(proxy.count_lines(std::regex("further filter lines of this session are not logged")) == 1);
}

TEST_CASE("trace: every file event of a long session is logged, past the per-session bound of filter lines",
          "[trace][integration][log]") {
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  std::string tmpl = (std::filesystem::temp_directory_path() / "isoproxy-rot-XXXXXX").string();
  REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
  const std::string dir = tmpl;
  ProxyProcess proxy("[[listener]]\nname = \"f\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" + std::to_string(up.port()) +
                     "\"\nfilters = [\"t\"]\n\n[filter.t]\nkind = \"trace\"\ndirectory = \"" + dir +
                     "\"\nmax_file_size = \"64KiB\"\nmax_files = 2\n");
  auto port = proxy.listen_port("f", 10s);
  REQUIRE(port);
  INFO(proxy.text());
  Conn c = connect_to("127.0.0.1", *port);
  REQUIRE(c.send_all(make_cr("CALLING", "CALLED")));
  REQUIRE(c.recv_exact(make_cr("CALLING", "CALLED").size(), 5s));
  // About 1.2 MB each way through 64 KiB files: some 36 files, each logged
  // as written, most as rotated and removed: far more than 16 lines.
  const ByteVec dt = make_dt(std::string(20000, 'x'));
  for (int i = 0; i < 60; ++i) {
    REQUIRE(c.send_all(dt));
    REQUIRE(c.recv_exact(dt.size(), 5s));
  }
  c.close();
  REQUIRE(proxy.wait_for_line(std::regex("close reason="), 10s));
  const auto written = proxy.count_lines(std::regex(R"(\[S1\] t: writing trace file )"));
  CHECK(written > 16);
  CHECK(proxy.count_lines(std::regex(R"(\[S1\] t: trace file .* reached max_file_size)")) == written - 1);
  CHECK(proxy.count_lines(std::regex(R"(\[S1\] t: removed old trace file )")) == written - 2);
  CHECK(proxy.count_lines(std::regex("further filter lines")) == 0);
  std::filesystem::remove_all(dir);
}
