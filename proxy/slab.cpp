#include "slab.h"

#include <sys/mman.h>

#include <new>

#include <cstdint>

namespace isoproxy {

struct SlabPool::Slab {
  Slab* prev = nullptr;  // in partial_
  Slab* next = nullptr;
  void* free = nullptr;  // free blocks, linked through their first word
  std::size_t used = 0;
  std::size_t carved = 0;  // blocks handed out at least once (the rest is untouched memory)
  bool listed = false;     // in partial_
};

namespace {
constexpr std::size_t kHeader = 64;  // sizeof(Slab), rounded to a cache line
static_assert(sizeof(void*) <= 16);
}  // namespace

SlabPool::SlabPool(std::size_t block_size)
    : block_((block_size + 15) / 16 * 16), per_slab_((kSlabBytes - kHeader) / block_) {
  static_assert(sizeof(Slab) <= kHeader);
}

SlabPool::~SlabPool() {
  // Slabs with blocks still in use stay mapped (their owners outlive us only
  // at process exit); empty ones go.
  if (spare_ != nullptr) unmap_slab(spare_);
  for (Slab* s = partial_; s != nullptr;) {
    Slab* next = s->next;
    if (s->used == 0) unmap_slab(s);
    s = next;
  }
}

SlabPool::Slab* SlabPool::map_slab() {
  // Twice the size, then trimmed to an aligned slab: a block finds its slab
  // by masking its address.
  void* raw = ::mmap(nullptr, 2 * kSlabBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto start = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t aligned = (start + kSlabBytes - 1) & ~(kSlabBytes - 1);
  if (aligned > start) ::munmap(raw, aligned - start);
  const std::uintptr_t tail = aligned + kSlabBytes;
  const std::uintptr_t end = start + 2 * kSlabBytes;
  if (end > tail) ::munmap(reinterpret_cast<void*>(tail), end - tail);
  ++slabs_;
  return new (reinterpret_cast<void*>(aligned)) Slab();
}

void SlabPool::unmap_slab(Slab* s) {
  --slabs_;
  ::munmap(s, kSlabBytes);
}

void SlabPool::unlink(Slab* s) {
  if (!s->listed) return;
  if (s->prev != nullptr) s->prev->next = s->next;
  else partial_ = s->next;
  if (s->next != nullptr) s->next->prev = s->prev;
  s->prev = s->next = nullptr;
  s->listed = false;
}

void SlabPool::push_partial(Slab* s) {
  s->prev = nullptr;
  s->next = partial_;
  if (partial_ != nullptr) partial_->prev = s;
  partial_ = s;
  s->listed = true;
}

void* SlabPool::allocate() {
  Slab* s = partial_;
  if (s == nullptr) {
    if (spare_ != nullptr) {
      s = spare_;
      spare_ = nullptr;
    } else {
      s = map_slab();
      if (s == nullptr) return nullptr;
    }
    push_partial(s);
  }
  void* p;
  if (s->free != nullptr) {
    p = s->free;
    s->free = *static_cast<void**>(p);
  } else {
    p = reinterpret_cast<char*>(s) + kHeader + s->carved * block_;
    ++s->carved;
  }
  ++s->used;
  ++in_use_;
  if (s->used == per_slab_) unlink(s);
  return p;
}

void SlabPool::deallocate(void* p) {
  if (p == nullptr) return;
  auto* s = reinterpret_cast<Slab*>(reinterpret_cast<std::uintptr_t>(p) & ~(kSlabBytes - 1));
  *static_cast<void**>(p) = s->free;
  s->free = p;
  --s->used;
  --in_use_;
  if (s->used == 0) {
    unlink(s);
    if (spare_ == nullptr) {
      spare_ = s;  // the first block freed again maps nothing (churn of short sessions)
    } else {
      unmap_slab(s);
    }
    return;
  }
  if (!s->listed) push_partial(s);
}

}  // namespace isoproxy
