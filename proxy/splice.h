// Support for the sessions' pass-through mode (issue 7): a small per-loop
// pool of pipes for splice(2), and a deferred call that lets a session take
// its sockets over from libuv outside any of libuv's stream callbacks.
//
// A pipe is held by a session's direction only while bytes are in it, so an
// idle session holds none; spare pipes are kept (at most kMaxSpare) to save
// the pipe2/close calls of the next burst.
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace isoproxy {

class SpliceSupport {
 public:
  struct Pipe {
    int rd = -1;
    int wr = -1;
    std::size_t capacity = 0;  // bytes the pipe holds (F_GETPIPE_SZ)
    bool valid() const { return rd >= 0; }
  };
  static constexpr std::size_t kMaxSpare = 64;
  static constexpr int kPipeSize = 256 * 1024;  // asked for with F_SETPIPE_SZ; the default (64 KiB) if refused

  explicit SpliceSupport(uv_loop_t* loop) : loop_(loop) {}
  ~SpliceSupport();
  SpliceSupport(const SpliceSupport&) = delete;
  SpliceSupport& operator=(const SpliceSupport&) = delete;

  // `run` is called from the loop's idle phase for each id given to defer().
  void start(std::function<void(std::uint64_t)> run);
  void close();  // closes the idle handle (the loop can end) and the spare pipes

  // A spare pipe or a new one; on failure `why` says why (EMFILE...).
  Pipe acquire(std::string& why);
  // An empty pipe goes back to the pool (closed if the pool is full).
  void release(Pipe& p);
  // A pipe that may still hold bytes: closed.
  void discard(Pipe& p);

  // Sessions in pass-through: spare pipes are kept for at most this many
  // (and kMaxSpare), so that once none is left no pipe stays open.
  void attach() { ++users_; }
  void detach();

  // Calls run(id) once from the idle phase, where no libuv stream callback
  // is on the stack.
  void defer(std::uint64_t id);

  std::size_t spare() const { return spare_.size(); }
  std::uint64_t pipes_open() const { return open_; }

 private:
  uv_loop_t* loop_;
  uv_idle_t idle_{};
  bool idle_initialised_ = false;
  bool closed_ = false;
  std::function<void(std::uint64_t)> run_;
  std::vector<std::uint64_t> pending_;
  std::vector<Pipe> spare_;
  std::uint64_t open_ = 0;  // pipes in use or spare
  std::size_t users_ = 0;
  static void close_fds(Pipe& p);
};

}  // namespace isoproxy
