// Filters of the chain end to end, through the real binary and real sockets.
#include <signal.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <regex>
#include <sstream>

#include "codec/text.h"
#include "codec/x224.h"
#include "pcap_reader.h"
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
