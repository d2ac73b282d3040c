// Fixed-size blocks carved from 64 KiB slabs mapped with mmap, for objects
// that many idle sessions free at once (a parked session's Io, park.h):
// malloc would keep that memory, its free chunks lying between the live
// ones, where a slab whose blocks are all free goes back to the kernel.
// One pool per thread (each worker allocates and frees on its own loop).
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

namespace isoproxy {

class SlabPool {
 public:
  static constexpr std::size_t kSlabBytes = 64 * 1024;

  explicit SlabPool(std::size_t block_size);
  ~SlabPool();  // unmaps the slabs with no block in use
  SlabPool(const SlabPool&) = delete;
  SlabPool& operator=(const SlabPool&) = delete;

  // nullptr when no memory could be mapped.
  void* allocate();
  void deallocate(void* p);

  std::size_t block_size() const { return block_; }
  std::size_t slabs() const { return slabs_; }
  std::size_t blocks_in_use() const { return in_use_; }

 private:
  struct Slab;
  Slab* map_slab();
  void unmap_slab(Slab* s);
  void unlink(Slab* s);
  void push_partial(Slab* s);

  std::size_t block_;
  std::size_t per_slab_;
  Slab* partial_ = nullptr;  // slabs with a free block
  Slab* spare_ = nullptr;    // one empty slab kept, so that one session coming and going maps nothing
  std::size_t slabs_ = 0;
  std::size_t in_use_ = 0;
};

// A standard allocator whose single objects (a map's nodes) come from a
// SlabPool, and whose arrays (a map's buckets) from operator new.
template <class T>
struct SlabAllocator {
  using value_type = T;
  SlabPool* pool;
  explicit SlabAllocator(SlabPool* p) noexcept : pool(p) {}
  template <class U>
  SlabAllocator(const SlabAllocator<U>& o) noexcept : pool(o.pool) {}  // NOLINT: rebinding converts
  T* allocate(std::size_t n) {
    if (n == 1 && sizeof(T) <= pool->block_size()) {
      if (void* p = pool->allocate()) return static_cast<T*>(p);
      throw std::bad_alloc();
    }
    return static_cast<T*>(::operator new(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (n == 1 && sizeof(T) <= pool->block_size()) pool->deallocate(p);
    else ::operator delete(p);
  }
  template <class U>
  bool operator==(const SlabAllocator<U>& o) const noexcept { return pool == o.pool; }
};

}  // namespace isoproxy
