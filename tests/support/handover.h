// Helpers shared by the stream tests that talk through the proxy from the
// test thread: concatenation, a short description of where two (large)
// byte streams differ, and an upstream that hands each connection the proxy
// makes to the test (passthrough_test, park_test).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "support/peers.h"

namespace isoproxy::test {

inline ByteVec cat(std::initializer_list<ByteVec> parts) {
  ByteVec out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// "" when equal; else where two streams first differ (never megabytes of them).
inline std::string mismatch(const ByteVec& got, const ByteVec& want) {
  if (got == want) return {};
  std::size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  std::ostringstream s;
  s << "got " << got.size() << " bytes, want " << want.size() << "; first difference at offset " << i;
  return s.str();
}
inline std::string mismatch(const std::optional<ByteVec>& got, const ByteVec& want) {
  if (!got) return "nothing received (timeout or EOF)";
  return mismatch(*got, want);
}

// Each connection the proxy makes is handed to the test thread, which does
// all the talking; the handler holds it open until the HandoverUpstream goes.
class HandoverUpstream {
 public:
  HandoverUpstream() : server_([this](Conn& c) { run(c); }) {}
  ~HandoverUpstream() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      released_ = true;
    }
    cv_.notify_all();
    server_.stop();
  }
  HandoverUpstream(const HandoverUpstream&) = delete;
  HandoverUpstream& operator=(const HandoverUpstream&) = delete;

  bool ok() const { return server_.ok(); }
  std::uint16_t port() const { return server_.port(); }
  // The index-th connection (0 = first), or nullptr at the deadline.
  Conn* wait_conn(std::size_t index, Millis timeout = Millis{10000}) {
    std::unique_lock<std::mutex> lk(mu_);
    if (!cv_.wait_for(lk, timeout, [&] { return conns_.size() > index; })) return nullptr;
    return conns_[index];
  }

 private:
  void run(Conn& c) {
    c.set_nodelay();
    std::unique_lock<std::mutex> lk(mu_);
    conns_.push_back(&c);
    cv_.notify_all();
    cv_.wait(lk, [&] { return released_; });
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Conn*> conns_;
  bool released_ = false;
  TestServer server_;
};

}  // namespace isoproxy::test
