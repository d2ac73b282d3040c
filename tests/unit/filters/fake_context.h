// A FilterContext that records what filters do, for unit tests of filters
// without sockets: counts, injected frames, the end reason, the route.
#pragma once

#include <arpa/inet.h>

#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <toml++/toml.h>
#include <utility>
#include <vector>

#include "codec/x224.h"
#include "conf/toml_reader.h"
#include "filters/filter.h"
#include "filters/registry.h"

namespace isoproxy::test {

class FakeContext final : public filters::FilterContext {
 public:
  explicit FakeContext(std::string client = "192.0.2.1:40000", std::string upstream = "192.0.2.10:102")
      : client_(std::move(client)), upstream_(std::move(upstream)) {
    // The client's sockaddr from its "ip:port" text (IPv4 or [IPv6]).
    const auto colon = client_.rfind(':');
    std::string ip = client_.substr(0, colon);
    const int port = std::stoi(client_.substr(colon + 1));
    if (!ip.empty() && ip.front() == '[') {
      ip = ip.substr(1, ip.size() - 2);
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss_);
      a->sin6_family = AF_INET6;
      a->sin6_port = htons(static_cast<std::uint16_t>(port));
      inet_pton(AF_INET6, ip.c_str(), &a->sin6_addr);
    } else {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss_);
      a->sin_family = AF_INET;
      a->sin_port = htons(static_cast<std::uint16_t>(port));
      inet_pton(AF_INET, ip.c_str(), &a->sin_addr);
    }
  }

  std::uint64_t session_id() const override { return 1; }
  std::string_view listener() const override { return "test"; }
  std::string client_address() const override { return client_; }
  const sockaddr* client_sockaddr() const override { return reinterpret_cast<const sockaddr*>(&ss_); }
  const std::string& upstream_address() const override { return upstream_; }
  filters::SessionAnnotations& annotations() override { return ann; }
  void count(std::string_view filter, std::string_view action, std::uint64_t n) override {
    counts[std::string(filter) + "." + std::string(action)] += n;
  }
  void inject(filters::Direction toward, std::vector<std::uint8_t> frame) override {
    injected.emplace_back(toward, std::move(frame));
  }
  void end_session(std::string reason) override { ended = std::move(reason); }
  void log(std::string_view message) override { logs.emplace_back(message); }
  void warn(std::string_view message) override {
    logs.emplace_back(message);
    warnings.emplace_back(message);
  }
  void set_route(filters::Route r) override {
    if (!route) {
      route = std::move(r);
      upstream_ = route->upstream.text;
    }
  }

  std::uint64_t count_of(const std::string& key) const {
    auto it = counts.find(key);
    return it == counts.end() ? 0 : it->second;
  }

  filters::SessionAnnotations ann;
  std::map<std::string, std::uint64_t> counts;
  std::vector<std::pair<filters::Direction, std::vector<std::uint8_t>>> injected;
  std::string ended;
  std::vector<std::string> logs;
  std::vector<std::string> warnings;  // those of logs given at warning level
  std::optional<filters::Route> route;

 private:
  std::string client_, upstream_;
  sockaddr_storage ss_{};
};

// Runs `bytes` (one whole TPKT) through `filter` as `dir`, the way the session
// does: decode, wrap in a ChainFrame, call on_frame. Returns the verdict and
// the frame's bytes afterwards.
struct FilterRun {
  filters::Verdict verdict;
  std::vector<std::uint8_t> bytes;
};

inline FilterRun run_filter(filters::Filter& filter, FakeContext& ctx, std::vector<std::uint8_t> bytes,
                            filters::Direction dir, std::size_t max_frame = 65535) {
  auto decoded = codec::decode_frame(bytes);
  if (!decoded) throw std::runtime_error("run_filter: frame does not decode: " + decoded.error().detail);
  filters::ChainFrame cf(codec::MutableBytes(bytes), &*decoded, dir, max_frame);
  const auto v = filter.on_frame(ctx, cf);
  codec::Bytes out = std::as_const(cf).bytes();
  return {v, std::vector<std::uint8_t>(out.begin(), out.end())};
}

// Builds a filter factory the way the loader does, from the body of a
// [filter.NAME] table (without the kind key). Errors, if any, go to *errors
// and nullptr is returned.
inline std::shared_ptr<const filters::FilterFactory> factory_from_toml(const std::string& kind, std::string_view body,
                                                                         std::vector<conf::ConfigError>* errors = nullptr,
                                                                         const std::string& name = "f") {
  const filters::FilterKind* k = filters::find_filter_kind(kind);
  if (!k) throw std::runtime_error("no filter kind " + kind);
  toml::table t = toml::parse(body, std::string_view("test.toml"));
  conf::ErrorSink sink("test.toml");
  conf::TableReader reader(t, "filter." + name, sink);
  auto f = k->parse(name, reader);
  if (errors) *errors = sink.errors();
  if (!sink.empty()) return nullptr;
  return f;
}

}  // namespace isoproxy::test
