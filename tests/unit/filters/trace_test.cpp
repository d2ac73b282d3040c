// trace: frames of both directions go to pcap files (with the session's real
// addresses) that read back byte-exact and that tshark dissects as COTP;
// rotation by size, max_files, selection by client and TSAP, write errors,
// and configuration errors.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "codec/encode.h"
#include "pcap_reader.h"
#include "support/vectors.h"
#include "unit/filters/fake_context.h"
#include "unit/filters/frame_util.h"

namespace isoproxy::test {
namespace {

namespace fs = std::filesystem;
using filters::Direction;
using ByteVec = std::vector<std::uint8_t>;

constexpr Direction kUp = Direction::kToUpstream;
constexpr Direction kDown = Direction::kToClient;

const std::vector<Vector>& vectors() {
  static const std::vector<Vector> rows = load_vectors();
  return rows;
}
ByteVec vec(std::string_view id) { return find_vector(vectors(), id).bytes(); }

// A DT carrying `n` octets of user data, built from V10 by the codec.
ByteVec big_dt(std::size_t n, std::uint8_t fill) {
  const ByteVec base = vec("V10");
  auto decoded = codec::decode_frame(base);
  REQUIRE(decoded.ok());
  codec::OwnedTpdu t = codec::OwnedTpdu::from(decoded->tpdu);
  t.data.assign(n, fill);
  auto encoded = codec::encode_frame(0, t);
  REQUIRE(encoded.ok());
  return *encoded;
}

ByteVec concat(std::initializer_list<ByteVec> parts) {
  ByteVec out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "isoproxy-trace-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

// The trace files in `dir`, oldest first (by timestamp, then sequence number).
std::vector<std::string> trace_files(const std::string& dir) {
  static const std::regex name(R"(isoproxy-test-(\d{8}T\d{6})-(\d+)\.pcap)");
  std::vector<std::pair<std::pair<std::string, unsigned long>, std::string>> found;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string file = e.path().filename().string();
    std::smatch m;
    INFO(file);
    REQUIRE(std::regex_match(file, m, name));
    found.push_back({{m[1].str(), std::stoul(m[2].str())}, e.path().string()});
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

struct StreamBytes {
  PcapStreamInfo info;
  ByteVec to_server, to_client;
};

struct Capture {
  std::vector<StreamBytes> streams;  // in order of first appearance
  std::vector<std::string> notices;
};

Capture read_capture(const std::string& path, std::uint16_t port = 102) {
  Capture c;
  std::map<int, ByteVec> up, down;
  auto summary = read_pcap_streams(
      path, port,
      [&](const PcapChunk& ch) {
        auto& to = ch.direction == PcapDirection::kClientToServer ? up[ch.stream->id] : down[ch.stream->id];
        to.insert(to.end(), ch.bytes.begin(), ch.bytes.end());
      },
      [&](const PcapNotice& n) { c.notices.push_back(n.message); });
  INFO(path);
  REQUIRE(summary.ok());
  for (const auto& s : summary->streams) c.streams.push_back({s, up[s.id], down[s.id]});
  return c;
}

std::shared_ptr<const filters::FilterFactory> trace_factory_in(const std::string& dir, const std::string& extra = "") {
  std::vector<conf::ConfigError> errors;
  auto f = factory_from_toml("trace", "directory = \"" + dir + "\"\n" + extra, &errors, "capture");
  for (const auto& e : errors) UNSCOPED_INFO(e.to_string());
  REQUIRE(f);
  return f;
}
std::shared_ptr<const filters::FilterFactory> trace_factory(const TempDir& dir, const std::string& extra = "") {
  return trace_factory_in(dir.str(), extra);
}

// Runs frames through one session's trace filter, checks each passes
// unchanged, and destroys the filter (the session's close).
void run_session(const filters::FilterFactory& factory, FakeContext& ctx,
                 const std::vector<std::pair<Direction, ByteVec>>& frames) {
  auto filter = factory.create();
  for (const auto& [dir, bytes] : frames) {
    const FilterRun r = run_filter(*filter, ctx, bytes, dir);
    CHECK(r.verdict == filters::Verdict::kContinue);
    CHECK(r.bytes == bytes);
  }
}

std::vector<std::string> config_errors(const std::string& body) {
  std::vector<conf::ConfigError> errors;
  auto f = factory_from_toml("trace", body, &errors, "capture");
  CHECK_FALSE(f);
  std::vector<std::string> out;
  for (const auto& e : errors) out.push_back(e.to_string());
  return out;
}

bool tshark_available() {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return false;
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (!dir.empty() && ::access((dir + "/tshark").c_str(), X_OK) == 0) return true;
  }
  return false;
}

std::pair<std::string, int> run(const std::string& command) {
  std::FILE* p = ::popen(command.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  std::array<char, 4096> buf{};
  std::size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = ::pclose(p);
  return {out, WIFEXITED(status) ? WEXITSTATUS(status) : -1};
}

}  // namespace

TEST_CASE("trace: writes both directions with the session's addresses", "[filters][trace]") {
  TempDir dir;
  auto factory = trace_factory(dir);
  CHECK(factory->kind() == "trace");
  CHECK(factory->needs_data_phase());

  const ByteVec cr = vec("V3"), cc = vec("V4"), dt = vec("V10"), dt_reply = vec("V10r");

  SECTION("IPv4 on port 102") {
    FakeContext ctx("192.0.2.1:40000", "192.0.2.10:102");
    run_session(*factory, ctx, {{kUp, cr}, {kDown, cc}, {kUp, dt}, {kDown, dt_reply}});
    CHECK(ctx.count_of("capture.frames") == 4);
    CHECK(ctx.count_of("capture.bytes") == cr.size() + cc.size() + dt.size() + dt_reply.size());
    CHECK(ctx.count_of("capture.write-errors") == 0);
    REQUIRE(ctx.logs.size() == 1);
    CHECK_THAT(ctx.logs[0], Catch::StartsWith("capture: writing trace file " + dir.str() + "/isoproxy-test-"));

    const auto files = trace_files(dir.str());
    REQUIRE(files.size() == 1);
    const Capture c = read_capture(files[0]);
    CHECK(c.notices.empty());
    REQUIRE(c.streams.size() == 1);
    CHECK(c.streams[0].info.client == "192.0.2.1:40000");
    CHECK(c.streams[0].info.server == "192.0.2.10:102");
    CHECK(c.streams[0].info.saw_syn);
    CHECK(c.streams[0].to_server == concat({cr, dt}));
    CHECK(c.streams[0].to_client == concat({cc, dt_reply}));
  }

  SECTION("IPv6, upstream on another port") {
    FakeContext ctx("[2001:db8::1]:40001", "[2001:db8::2]:1102");
    run_session(*factory, ctx, {{kUp, cr}, {kDown, cc}, {kUp, dt}});
    const auto files = trace_files(dir.str());
    REQUIRE(files.size() == 1);
    const Capture c = read_capture(files[0], 1102);
    REQUIRE(c.streams.size() == 1);
    CHECK(c.streams[0].info.client == "[2001:db8::1]:40001");
    CHECK(c.streams[0].info.server == "[2001:db8::2]:1102");
    CHECK(c.streams[0].to_server == concat({cr, dt}));
    CHECK(c.streams[0].to_client == cc);
  }

  SECTION("an IPv4 client seen on an IPv6 socket is written as IPv4") {
    FakeContext ctx("[::ffff:192.0.2.7]:40002", "192.0.2.10:102");
    run_session(*factory, ctx, {{kUp, cr}, {kDown, cc}});
    const Capture c = read_capture(trace_files(dir.str()).at(0));
    REQUIRE(c.streams.size() == 1);
    CHECK(c.streams[0].info.client == "192.0.2.7:40002");
    CHECK(c.streams[0].info.server == "192.0.2.10:102");
  }

  SECTION("an IPv6 client relayed to an IPv4 upstream: the upstream shows as ::ffff:") {
    FakeContext ctx("[2001:db8::1]:40003", "192.0.2.10:102");
    run_session(*factory, ctx, {{kUp, cr}, {kDown, cc}});
    const Capture c = read_capture(trace_files(dir.str()).at(0));
    REQUIRE(c.streams.size() == 1);
    CHECK(c.streams[0].info.client == "[2001:db8::1]:40003");
    CHECK(c.streams[0].info.server == "[::ffff:192.0.2.10]:102");
  }

  SECTION("sessions at the same time share the listener's file, one stream each") {
    FakeContext a("192.0.2.1:40000"), b("192.0.2.2:40001");
    auto fa = factory->create();
    auto fb = factory->create();
    (void)run_filter(*fa, a, cr, kUp);
    (void)run_filter(*fb, b, vec("V5"), kUp);
    (void)run_filter(*fa, a, cc, kDown);
    fb.reset();
    (void)run_filter(*fa, a, dt, kUp);
    fa.reset();
    const auto files = trace_files(dir.str());
    REQUIRE(files.size() == 1);
    const Capture c = read_capture(files[0]);
    CHECK(c.notices.empty());
    REQUIRE(c.streams.size() == 2);
    CHECK(c.streams[0].info.client == "192.0.2.1:40000");
    CHECK(c.streams[0].to_server == concat({cr, dt}));
    CHECK(c.streams[0].to_client == cc);
    CHECK(c.streams[1].info.client == "192.0.2.2:40001");
    CHECK(c.streams[1].to_server == vec("V5"));
    CHECK(c.streams[1].to_client.empty());
  }

  SECTION("the CR waits for a routing filter later in the chain to choose the upstream") {
    FakeContext ctx("192.0.2.1:40000", "");
    auto f = factory->create();
    (void)run_filter(*f, ctx, cr, kUp);
    CHECK(trace_files(dir.str()).empty());
    auto to = conf::parse_socket_address("192.0.2.20:1102");
    REQUIRE(to.ok());
    ctx.set_route(filters::Route{"r/a", *to, {}});
    (void)run_filter(*f, ctx, cc, kDown);
    f.reset();
    const Capture c = read_capture(trace_files(dir.str()).at(0), 1102);
    REQUIRE(c.streams.size() == 1);
    CHECK(c.streams[0].info.server == "192.0.2.20:1102");
    CHECK(c.streams[0].to_server == cr);
    CHECK(c.streams[0].to_client == cc);
    CHECK(ctx.count_of("capture.frames") == 2);
  }

  SECTION("a CR refused before any upstream was chosen is still written") {
    FakeContext ctx("192.0.2.1:40000", "");
    run_session(*factory, ctx, {{kUp, cr}});
    const Capture c = read_capture(trace_files(dir.str()).at(0));
    REQUIRE(c.streams.size() == 1);
    CHECK(c.streams[0].info.server == "0.0.0.0:102");
    CHECK(c.streams[0].to_server == cr);
  }
}

TEST_CASE("trace: rotation by size and max_files", "[filters][trace]") {
  TempDir dir;
  const ByteVec cr = vec("V3"), cc = vec("V4");
  // 64KiB files, 20000-octet DTs: three to four DTs per file.
  std::vector<ByteVec> dts;
  for (int i = 0; i < 20; ++i) dts.push_back(big_dt(20000, static_cast<std::uint8_t>(i)));

  const auto run_long_session = [&](const filters::FilterFactory& factory, FakeContext& ctx) {
    std::vector<std::pair<Direction, ByteVec>> frames = {{kUp, cr}, {kDown, cc}};
    for (std::size_t i = 0; i < dts.size(); ++i) frames.emplace_back(i % 2 == 0 ? kUp : kDown, dts[i]);
    run_session(factory, ctx, frames);
  };

  SECTION("max_files = 0 keeps every file; together they hold the whole session") {
    auto factory = trace_factory(dir, "max_file_size = \"64KiB\"\nmax_files = 0\n");
    CHECK_THAT(factory->settings_toml(), Catch::Contains("max_file_size = \"64KiB\"\nmax_files = 0\n"));
    FakeContext ctx;
    run_long_session(*factory, ctx);
    const auto files = trace_files(dir.str());
    CHECK(files.size() >= 5);
    CHECK(ctx.count_of("capture.files-rotated") == files.size() - 1);
    ByteVec up, down;
    for (const auto& file : files) {
      INFO(file);
      CHECK(fs::file_size(file) <= 64 * 1024);
      const Capture c = read_capture(file);
      CHECK(c.notices.empty());
      REQUIRE(c.streams.size() == 1);
      // Every file starts the flow with a handshake of its own.
      CHECK(c.streams[0].info.saw_syn);
      CHECK(c.streams[0].info.client == "192.0.2.1:40000");
      CHECK(c.streams[0].info.server == "192.0.2.10:102");
      up.insert(up.end(), c.streams[0].to_server.begin(), c.streams[0].to_server.end());
      down.insert(down.end(), c.streams[0].to_client.begin(), c.streams[0].to_client.end());
    }
    ByteVec want_up = cr, want_down = cc;
    for (std::size_t i = 0; i < dts.size(); ++i) {
      auto& w = i % 2 == 0 ? want_up : want_down;
      w.insert(w.end(), dts[i].begin(), dts[i].end());
    }
    CHECK(up == want_up);
    CHECK(down == want_down);

    // Merged into one capture (what mergecap does with files of one link
    // type: every record, in time order, under one header), each file's part
    // of the session is a TCP stream of its own, not a retransmission of the
    // part before: its handshake has ISNs of its own.
    std::string merged;
    for (std::size_t i = 0; i < files.size(); ++i) {
      std::ifstream in(files[i], std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      merged += i == 0 ? bytes : bytes.substr(24);  // the pcap file header once
    }
    const std::string merged_path = dir.str() + "/merged.pcap";
    { std::ofstream(merged_path, std::ios::binary) << merged; }
    const Capture all = read_capture(merged_path);
    CHECK(all.notices.empty());
    REQUIRE(all.streams.size() == files.size());
    ByteVec merged_up, merged_down;
    for (const auto& stream : all.streams) {
      CHECK(stream.info.saw_syn);
      merged_up.insert(merged_up.end(), stream.to_server.begin(), stream.to_server.end());
      merged_down.insert(merged_down.end(), stream.to_client.begin(), stream.to_client.end());
    }
    CHECK(merged_up == want_up);
    CHECK(merged_down == want_down);
  }

  SECTION("the numbering goes on across reloads: max_files keeps the files opened last") {
    // Each reload makes a new sink with files of its own; within one second
    // their names must still sort in the order they were opened.
    std::vector<std::string> clients;
    for (int i = 1; i <= 4; ++i) {
      auto factory = trace_factory(dir, "max_files = 2\n");  // a reload: a new sink
      clients.push_back("192.0.2." + std::to_string(i) + ":40000");
      FakeContext ctx(clients.back());
      run_session(*factory, ctx, {{kUp, cr}, {kDown, cc}});
    }  // each sink goes with its factory, as after a reload, closing its file
    const auto files = trace_files(dir.str());
    REQUIRE(files.size() == 2);
    CHECK(read_capture(files[0]).streams.at(0).info.client == clients[2]);
    CHECK(read_capture(files[1]).streams.at(0).info.client == clients[3]);
  }

  SECTION("after a restart within the same second, a new file sorts after the earlier run's") {
    // The earlier run's files of this second and the next (should the
    // second turn meanwhile), numbered high; max_files had freed the low numbers.
    std::vector<std::string> earlier;
    const std::time_t now = std::time(nullptr);
    for (std::time_t t : {now, now + 1}) {
      std::tm tm{};
      gmtime_r(&t, &tm);
      char stamp[32];
      std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%S", &tm);
      earlier.push_back(dir.str() + "/isoproxy-test-" + stamp + "-100000.pcap");
      std::fclose(std::fopen(earlier.back().c_str(), "w"));
    }
    auto factory = trace_factory(dir, "max_files = 2\n");
    FakeContext ctx("192.0.2.77:40000");
    run_session(*factory, ctx, {{kUp, cr}, {kDown, cc}});
    const auto files = trace_files(dir.str());
    REQUIRE(files.size() == 2);
    // The oldest went, not the file just written.
    CHECK_FALSE(fs::exists(earlier[0]));
    const bool ours_kept = std::any_of(files.begin(), files.end(), [](const std::string& f) {
      const Capture c = read_capture(f);
      return !c.streams.empty() && c.streams[0].info.client == "192.0.2.77:40000";
    });
    CHECK(ours_kept);
  }

  SECTION("max_files = 2 keeps the newest two, each readable") {
    // A file from an earlier run counts too (and, being oldest, goes first);
    // files of other listeners and other names are left alone.
    const std::string old = dir.str() + "/isoproxy-test-20000101T000000-1.pcap";
    const std::string other = dir.str() + "/isoproxy-other-20000101T000000-1.pcap";
    const std::string unrelated = dir.str() + "/notes.txt";
    for (const auto& p : {old, other, unrelated}) std::fclose(std::fopen(p.c_str(), "w"));

    auto factory = trace_factory(dir, "max_file_size = \"64KiB\"\nmax_files = 2\n");
    FakeContext ctx;
    run_long_session(*factory, ctx);
    CHECK(ctx.count_of("capture.files-rotated") >= 4);
    CHECK_FALSE(fs::exists(old));
    CHECK(fs::exists(other));
    CHECK(fs::exists(unrelated));
    fs::remove(other);
    fs::remove(unrelated);
    const auto files = trace_files(dir.str());
    REQUIRE(files.size() == 2);
    for (const auto& file : files) {
      const Capture c = read_capture(file);
      CHECK(c.notices.empty());
      REQUIRE(c.streams.size() == 1);
      CHECK(c.streams[0].info.saw_syn);
      CHECK(fs::file_size(file) <= 64 * 1024);
    }
    // The last file ends with the last DT (sent toward the client).
    const Capture last = read_capture(files.back());
    const ByteVec& tail = last.streams[0].to_client;
    REQUIRE(tail.size() >= dts.back().size());
    CHECK(ByteVec(tail.end() - static_cast<std::ptrdiff_t>(dts.back().size()), tail.end()) == dts.back());
    const auto removed = std::count_if(ctx.logs.begin(), ctx.logs.end(), [](const std::string& l) {
      return l.find("removed old trace file") != std::string::npos;
    });
    CHECK(removed >= 3);
  }
}

TEST_CASE("trace: selection by client address and TSAP", "[filters][trace]") {
  TempDir dir;
  const ByteVec cr_0001 = vec("V3"), cc = vec("V4"), cr_0100 = vec("V5"), dt = vec("V10");

  SECTION("clients: only matching clients are traced") {
    auto factory = trace_factory(dir, "clients = [\"10.0.0.0/8\", \"2001:db8:1::/48\"]\n");
    FakeContext outside("192.0.2.1:40000");
    run_session(*factory, outside, {{kUp, cr_0001}, {kDown, cc}, {kUp, dt}});
    CHECK(outside.counts.empty());
    CHECK(trace_files(dir.str()).empty());

    FakeContext inside("10.1.2.3:40000"), inside6("[2001:db8:1::5]:40000");
    run_session(*factory, inside, {{kUp, cr_0001}, {kDown, cc}});
    run_session(*factory, inside6, {{kUp, cr_0001}});
    CHECK(inside.count_of("capture.frames") == 2);
    const auto files = trace_files(dir.str());
    REQUIRE(files.size() == 1);
    const Capture c = read_capture(files[0]);
    REQUIRE(c.streams.size() == 2);
    CHECK(c.streams[0].info.client == "10.1.2.3:40000");
    CHECK(c.streams[1].info.client == "[2001:db8:1::5]:40000");
  }

  SECTION("calling: traced from the CR on if the CR matches") {
    auto factory = trace_factory(dir, "calling = [\"hex:0100\"]\n");
    FakeContext miss("192.0.2.1:40000");
    run_session(*factory, miss, {{kUp, cr_0001}, {kDown, cc}, {kUp, dt}});
    CHECK(miss.counts.empty());
    CHECK(trace_files(dir.str()).empty());

    FakeContext hit("192.0.2.2:40000");
    // A frame before the CR is not traced: the decision is taken on the CR.
    run_session(*factory, hit, {{kUp, dt}, {kUp, cr_0100}, {kDown, cc}, {kUp, dt}});
    CHECK(hit.count_of("capture.frames") == 3);
    const Capture c = read_capture(trace_files(dir.str()).at(0));
    REQUIRE(c.streams.size() == 1);
    CHECK(c.streams[0].to_server == concat({cr_0100, dt}));
    CHECK(c.streams[0].to_client == cc);
  }

  SECTION("calling and called must both match; a prefix matches") {
    auto factory = trace_factory(dir, "calling = [\"hex:01*\"]\ncalled = [\"hex:0102\", \"EXCHANGETSAP1\"]\n");
    FakeContext v9("192.0.2.1:40000"), v5("192.0.2.2:40000");
    run_session(*factory, v9, {{kUp, vec("V9a")}, {kDown, vec("V9b")}});  // called 0101
    run_session(*factory, v5, {{kUp, cr_0100}, {kDown, vec("V6")}});       // called 0102
    CHECK(v9.counts.empty());
    CHECK(v5.count_of("capture.frames") == 2);
    const Capture c = read_capture(trace_files(dir.str()).at(0));
    REQUIRE(c.streams.size() == 1);
    CHECK(c.streams[0].info.client == "192.0.2.2:40000");
    CHECK(c.streams[0].to_server == cr_0100);
  }

  SECTION("a TSAP given twice: traced if any copy matches, as the peer may read that one") {
    auto factory = trace_factory(dir, "called = [\"hex:0101\"]\n");
    codec::OwnedTpdu t = owned(cr_0100);  // V5: called 0102
    t.params.push_back({codec::param::kCalledTsap, {0x01, 0x01}});
    const ByteVec twice = encode(t);
    FakeContext ctx("192.0.2.2:40000");
    run_session(*factory, ctx, {{kUp, twice}, {kDown, cc}});
    CHECK(ctx.count_of("capture.frames") == 2);
    const Capture c = read_capture(trace_files(dir.str()).at(0));
    REQUIRE(c.streams.size() == 1);
    CHECK(c.streams[0].to_server == twice);
  }

  SECTION("clients and TSAPs together") {
    auto factory = trace_factory(dir, "clients = \"10.0.0.0/8\"\ncalling = [\"hex:0100\"]\n");
    FakeContext wrong_client("192.0.2.1:40000"), ok("10.0.0.1:40000");
    run_session(*factory, wrong_client, {{kUp, cr_0100}, {kDown, cc}});
    run_session(*factory, ok, {{kUp, cr_0100}, {kDown, cc}});
    CHECK(wrong_client.counts.empty());
    CHECK(ok.count_of("capture.frames") == 2);
    const Capture c = read_capture(trace_files(dir.str()).at(0));
    REQUIRE(c.streams.size() == 1);
    CHECK(c.streams[0].info.client == "10.0.0.1:40000");
  }
}

TEST_CASE("trace: a write error stops tracing the session, never the relay", "[filters][trace]") {
  auto dir = std::make_unique<TempDir>();
  auto factory = trace_factory(*dir);
  const std::string gone = dir->str();
  dir.reset();  // the directory disappears after the configuration was loaded
  REQUIRE_FALSE(fs::exists(gone));

  FakeContext ctx;
  run_session(*factory, ctx, {{kUp, vec("V3")}, {kDown, vec("V4")}, {kUp, vec("V10")}});
  CHECK(ctx.count_of("capture.write-errors") == 1);
  CHECK(ctx.count_of("capture.frames") == 0);
  REQUIRE(ctx.logs.size() == 1);
  CHECK(ctx.warnings == ctx.logs);  // at warning level: heard at log_level = "warn"
  CHECK_THAT(ctx.logs[0], Catch::Contains("cannot open " + gone + "/isoproxy-test-"));
  CHECK_THAT(ctx.logs[0], Catch::EndsWith("; this session is no longer traced (no new trace file for 10 s)"));
  CHECK(ctx.ended.empty());
  CHECK(ctx.injected.empty());

  // Sessions right after it are not traced, silently (counted): on a full
  // disk each would otherwise make one more empty file and one more line.
  fs::create_directory(gone);
  FakeContext soon("192.0.2.3:40000");
  run_session(*factory, soon, {{kUp, vec("V3")}});
  CHECK(soon.count_of("capture.untraced") == 1);
  CHECK(soon.count_of("capture.write-errors") == 0);
  CHECK(soon.count_of("capture.frames") == 0);
  CHECK(soon.logs.empty());
  CHECK(trace_files(gone).empty());

  // A reload (a new sink) tries again at once: the directory is back.
  auto reloaded = trace_factory_in(gone);
  FakeContext next("192.0.2.4:40000");
  run_session(*reloaded, next, {{kUp, vec("V3")}});
  CHECK(next.count_of("capture.write-errors") == 0);
  CHECK(next.count_of("capture.frames") == 1);
  fs::remove_all(gone);
}

TEST_CASE("trace: settings_toml", "[filters][trace]") {
  TempDir dir;
  auto plain = trace_factory(dir);
  CHECK(plain->settings_toml() == "directory = \"" + dir.str() +
                                      "\"\nmax_file_size = \"64MiB\"\nmax_files = 10\n");
  auto full = trace_factory(dir, "clients = [\"10.0.0.0/8\"]\ncalling = [\"hex:0100\", \"SIMATIC-*\"]\ncalled = [\"X\"]\n");
  CHECK_THAT(full->settings_toml(),
             Catch::Contains("clients = [\"10.0.0.0/8\"]\ncalling = [\"hex:0100\", \"SIMATIC-*\"]\ncalled = [\"X\"]\n"));
  // What `check --verbose` prints reads back to the same settings.
  for (const auto& f : {plain, full}) {
    auto again = factory_from_toml("trace", f->settings_toml());
    REQUIRE(again);
    CHECK(again->settings_toml() == f->settings_toml());
  }
}

TEST_CASE("trace: configuration errors", "[filters][trace]") {
  TempDir dir;
  const std::string d = "directory = \"" + dir.str() + "\"\n";

  SECTION("missing directory") {
    const auto e = config_errors("max_files = 3\n");
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::StartsWith("test.toml:"));
    CHECK_THAT(e[0], Catch::Contains("filter.capture.directory: required"));
  }
  SECTION("nonexistent directory") {
    const auto e = config_errors("directory = \"" + dir.str() + "/nope\"\n");
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::StartsWith("test.toml:1:13: filter.capture.directory: \"" + dir.str() + "/nope\" does not exist"));
  }
  SECTION("not a directory") {
    const std::string file = dir.str() + "/file";
    std::fclose(std::fopen(file.c_str(), "w"));
    const auto e = config_errors("directory = \"" + file + "\"\n");
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::EndsWith("is not a directory"));
  }
  SECTION("bad sizes and counts") {
    auto e = config_errors(d + "max_file_size = \"64XB\"\n");
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::StartsWith("test.toml:2:17: filter.capture.max_file_size: "));
    e = config_errors(d + "max_file_size = \"4KiB\"\n");
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::Contains("must be between 64KiB (65536)"));
    e = config_errors(d + "max_files = -1\n");
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::Contains("filter.capture.max_files: must be between 0 and"));
  }
  SECTION("selectors") {
    auto e = config_errors(d + "clients = [\"10.0.0.0/33\"]\n");
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::Contains("filter.capture.clients[0]: "));
    e = config_errors(d + "clients = []\n");
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::Contains("an empty list would trace no session"));
    e = config_errors(d + "calling = [\"hex:01\", \"hex:0g\", 5]\n");
    REQUIRE(e.size() == 2);
    CHECK_THAT(e[0], Catch::StartsWith("test.toml:2:22: filter.capture.calling[1]: \"hex:0g\""));
    CHECK_THAT(e[1], Catch::Contains("filter.capture.calling[2]: expected a TSAP string"));
    e = config_errors(d + "called = \"hex:0102\"\n");
    REQUIRE(e.size() == 1);
    CHECK_THAT(e[0], Catch::Contains("(write [\"hex:0102\"])"));
  }
  SECTION("every error at once, unknown keys included") {
    const auto e = config_errors("max_file_size = 1\nmax_filez = 3\n");
    REQUIRE(e.size() == 3);
    CHECK_THAT(e[0] + e[1] + e[2], Catch::Contains("did you mean \"max_files\""));
  }
}

TEST_CASE("trace: tshark dissects a trace file as COTP in both directions", "[filters][trace][tshark]") {
  if (!tshark_available()) {
    WARN("tshark not found on PATH: skipping the tshark check");
    return;
  }
  TempDir dir;
  auto factory = trace_factory(dir);
  FakeContext ctx("192.0.2.1:40000", "192.0.2.10:102");
  run_session(*factory, ctx, {{kUp, vec("V3")}, {kDown, vec("V4")}, {kUp, vec("V10")}, {kDown, vec("V10r")}});
  FakeContext other("[2001:db8::1]:40001", "[2001:db8::2]:1102");
  run_session(*factory, other, {{kUp, vec("V7")}, {kDown, vec("V8")}});
  const auto files = trace_files(dir.str());
  REQUIRE(files.size() == 1);

  // Port 102 is TPKT by default; 1102 needs "-d tcp.port==1102,tpkt".
  const auto [out, status] = run("tshark -r '" + files[0] +
                                 "' -d tcp.port==1102,tpkt -T fields -E separator=, -e tcp.srcport -e cotp.type "
                                 "-e cotp.src-tsap -e cotp.dst-tsap 2>&1");
  INFO(out);
  REQUIRE(status == 0);
  std::vector<std::string> cotp;
  std::stringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    // Packets with a COTP type (the handshakes and FINs have none).
    const auto comma = line.find(',');
    const bool packet = !line.empty() && line[0] >= '0' && line[0] <= '9';  // not a stderr line
    if (packet && comma != std::string::npos && comma + 1 < line.size() && line[comma + 1] != ',') cotp.push_back(line);
  }
  // CR (0x0e) from the client, CC (0x0d) from port 102, the DTs (0x0f);
  // the second session's ASCII TSAPs both ways.
  CHECK(cotp == std::vector<std::string>{
                    "40000,0x0e,0x0001,0x0001",
                    "102,0x0d,0x0001,0x0001",
                    "40000,0x0f,,",
                    "102,0x0f,,",
                    "40001,0x0e,0-0ABCD0,0-0ZYXW1",
                    "1102,0x0d,0-0ABCD0,0-0ZYXW1",
                });
}

}  // namespace isoproxy::test
