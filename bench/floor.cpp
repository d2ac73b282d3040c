// isoproxy-floor: the least a TCP relay can make the kernel do per
// connection, as a yardstick for bench/run.sh's connection-rate workload.
//
// Not a product and not a model for one: one thread, no parsing, no logging,
// no stats, no timeouts, no limits. It relays bytes both ways with the
// fewest system calls this author knows for a connect-relay-close cycle:
//
//   - accept4 with SOCK_NONBLOCK, TCP_NODELAY inherited from the listener;
//   - one epoll_ctl(ADD) per socket, edge-triggered with EPOLLIN, EPOLLOUT
//     and EPOLLRDHUP, never modified; close() removes it from the set;
//   - a failed connect is seen as EPOLLERR (no getsockopt(SO_ERROR)), and no
//     getpeername or getsockname;
//   - a short read means the socket is drained (no read to see EAGAIN),
//     unless EPOLLRDHUP says the FIN is there to be read;
//   - TCP_DEFER_ACCEPT on the connecting socket, so that the handshake's last
//     ACK leaves with the first bytes (what isoproxy's smart_connect does).
//
// Whatever CPU per connection it needs is what the kernel charges a relay
// for the sockets, segments and wake-ups of the cycle: no relay that does the
// same on the wire can spend less. bench/README.md says how the table uses it.
//
//   isoproxy-floor LISTEN_IPv4:PORT UPSTREAM_IPv4:PORT
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

constexpr size_t kBuf = 16384;

struct Conn;

// One socket of a relayed connection; epoll's data.ptr points here.
struct End {
  Conn* conn;
  int fd = -1;
  bool readable = false;  // may have bytes (or the FIN) to read
  bool writable = false;  // may take bytes
  bool rdhup = false;     // the peer's FIN has arrived
  bool eof = false;       // read returned 0
  bool shut = false;      // we sent our FIN
  // Bytes read from this end, not yet written to the other.
  char buf[kBuf];
  size_t off = 0, len = 0;
};

struct Conn {
  End a, b;  // a: the client, b: the upstream
  bool connected = false;
  bool failed = false;
  Conn* next_free = nullptr;
};

int g_ep = -1;
int g_listener = -1;
sockaddr_in g_upstream{};
const int kOne = 1;

bool parse(const char* text, sockaddr_in* out) {
  std::string s(text);
  auto colon = s.rfind(':');
  if (colon == std::string::npos) return false;
  *out = sockaddr_in{};
  out->sin_family = AF_INET;
  char* end = nullptr;
  long port = std::strtol(s.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port < 1 || port > 65535) return false;
  out->sin_port = htons(static_cast<uint16_t>(port));
  return inet_pton(AF_INET, s.substr(0, colon).c_str(), &out->sin_addr) == 1;
}

// Connections are reused rather than freed: malloc would give the 32 KiB
// back to the kernel (brk) and take it again for the next one.
Conn* g_free = nullptr;

Conn* make_conn() {
  Conn* c = g_free;
  if (c != nullptr) {
    g_free = c->next_free;
    for (End* e : {&c->a, &c->b}) {  // every field but the buffer
      e->fd = -1;
      e->readable = e->writable = e->rdhup = e->eof = e->shut = false;
      e->off = e->len = 0;
    }
    c->connected = c->failed = false;
  } else {
    c = new Conn;
  }
  c->a.conn = c->b.conn = c;
  return c;
}

void destroy(Conn* c) {
  // close() takes each socket out of the epoll set: it is the only reference.
  close(c->a.fd);
  if (c->b.fd >= 0) close(c->b.fd);
  c->next_free = g_free;
  g_free = c;
}

// Moves what it can from `from` to `to`. Returns false if the connection failed.
bool move(End& from, End& to, bool to_ready) {
  for (;;) {
    if (from.len > 0) {
      if (!to_ready || !to.writable) return true;
      ssize_t n = write(to.fd, from.buf + from.off, from.len);
      if (n < 0) {
        if (errno == EAGAIN) { to.writable = false; return true; }
        return false;
      }
      from.off += static_cast<size_t>(n);
      from.len -= static_cast<size_t>(n);
      if (from.len > 0) { to.writable = false; return true; }
      from.off = 0;
    }
    if (from.eof) {
      if (to_ready && !to.shut) {
        to.shut = true;
        // If `to` has ended too and all it sent was delivered, the close()
        // that follows sends this FIN: no shutdown() needed.
        if (!(to.eof && to.len == 0) && shutdown(to.fd, SHUT_WR) < 0) return false;
      }
      return true;
    }
    if (!from.readable) return true;
    ssize_t n = read(from.fd, from.buf, kBuf);
    if (n < 0) {
      if (errno == EAGAIN) { from.readable = false; return true; }
      return false;
    }
    if (n == 0) { from.eof = true; continue; }
    from.len = static_cast<size_t>(n);
    // A short read drained the socket, unless the FIN is still to be read.
    if (static_cast<size_t>(n) < kBuf && !from.rdhup) from.readable = false;
  }
}

void pump(Conn* c) {
  if (!move(c->a, c->b, c->connected) || !move(c->b, c->a, true)) { destroy(c); return; }
  bool a_done = c->a.eof && c->a.len == 0 && c->b.shut;
  bool b_done = c->b.eof && c->b.len == 0 && c->a.shut;
  if (a_done && b_done) destroy(c);
}

bool add(End& e) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = &e;
  return epoll_ctl(g_ep, EPOLL_CTL_ADD, e.fd, &ev) == 0;
}

// One connection per wake-up: the listener is level-triggered, so epoll
// reports it again while more wait, and no accept4 is spent on EAGAIN.
void accept_one() {
  {
    int fd = accept4(g_listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == ECONNABORTED || errno == EINTR) return;  // nothing, or died in the queue
      // Out of descriptors or memory: the listener stays readable, so
      // returning would spin. A yardstick stops instead, and says why.
      std::fprintf(stderr, "isoproxy-floor: accept: %s\n", std::strerror(errno));
      std::exit(1);
    }
    Conn* c = make_conn();
    c->a.fd = fd;
    c->b.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->b.fd < 0) { destroy(c); return; }
    setsockopt(c->b.fd, IPPROTO_TCP, TCP_NODELAY, &kOne, sizeof kOne);
    setsockopt(c->b.fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &kOne, sizeof kOne);
    if ((connect(c->b.fd, reinterpret_cast<sockaddr*>(&g_upstream), sizeof g_upstream) < 0 && errno != EINPROGRESS) ||
        !add(c->a) || !add(c->b)) {
      destroy(c);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  sockaddr_in listen_at{};
  if (argc != 3 || !parse(argv[1], &listen_at) || !parse(argv[2], &g_upstream)) {
    std::fprintf(stderr, "usage: isoproxy-floor LISTEN_IPv4:PORT UPSTREAM_IPv4:PORT\n");
    return 2;
  }
  // A write toward a peer that reset gets EPIPE, not the signal that would end the relay.
  std::signal(SIGPIPE, SIG_IGN);
  g_listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  setsockopt(g_listener, SOL_SOCKET, SO_REUSEADDR, &kOne, sizeof kOne);
  setsockopt(g_listener, IPPROTO_TCP, TCP_NODELAY, &kOne, sizeof kOne);  // inherited by accepted sockets
  if (bind(g_listener, reinterpret_cast<sockaddr*>(&listen_at), sizeof listen_at) < 0 || listen(g_listener, 4096) < 0) {
    std::fprintf(stderr, "isoproxy-floor: %s: %s\n", argv[1], std::strerror(errno));
    return 1;
  }
  g_ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event lev{};
  lev.events = EPOLLIN;
  lev.data.ptr = nullptr;
  epoll_ctl(g_ep, EPOLL_CTL_ADD, g_listener, &lev);
  epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(g_ep, evs, 256, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::perror("isoproxy-floor: epoll_wait");
      return 1;
    }
    // Flags first, for every event of the batch; then each connection is
    // pumped once. A pump may free its connection, so the second loop
    // compares the pointers collected by the first and follows none it has
    // already pumped.
    Conn* conns[256];
    for (int i = 0; i < n; i++) {
      auto* e = static_cast<End*>(evs[i].data.ptr);
      conns[i] = e == nullptr ? nullptr : e->conn;
      if (e == nullptr) continue;
      uint32_t f = evs[i].events;
      if (f & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) e->readable = true;
      if (f & (EPOLLRDHUP | EPOLLHUP)) e->rdhup = true;
      if (f & (EPOLLOUT | EPOLLERR | EPOLLHUP)) e->writable = true;
      if (e == &e->conn->b && !e->conn->connected) {
        if (f & EPOLLERR) e->conn->failed = true;  // the connect failed
        else if (f & EPOLLOUT) e->conn->connected = true;
      }
    }
    for (int i = 0; i < n; i++) {
      if (conns[i] == nullptr) { accept_one(); continue; }
      bool first = true;
      for (int j = 0; j < i && first; j++) first = conns[j] != conns[i];
      if (!first) continue;
      if (conns[i]->failed) destroy(conns[i]);
      else pump(conns[i]);
    }
  }
}
