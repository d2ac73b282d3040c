// SlabPool (proxy/slab.h): blocks stay distinct and aligned to 16, a slab
// whose blocks are all free is unmapped (one kept spare), and SlabAllocator
// serves a map's nodes from it. TsapValue and FilterCounters: the compact
// forms a parked session keeps its TSAPs and counters in.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <set>
#include <unordered_map>
#include <vector>

#include "filters/filter.h"
#include "session.h"
#include "slab.h"

using namespace isoproxy;

TEST_CASE("slab: blocks are distinct, writable and returned", "[slab]") {
  SlabPool pool(100);  // rounded up to 112
  REQUIRE(pool.block_size() == 112);
  const std::size_t per_slab = (SlabPool::kSlabBytes - 64) / 112;
  std::vector<void*> blocks;
  std::set<std::uintptr_t> seen;
  for (std::size_t i = 0; i < 3 * per_slab + 1; ++i) {
    void* p = pool.allocate();
    REQUIRE(p != nullptr);
    CHECK(reinterpret_cast<std::uintptr_t>(p) % 16 == 0);
    std::memset(p, static_cast<int>(i & 0xFF), 112);
    CHECK(seen.insert(reinterpret_cast<std::uintptr_t>(p)).second);
    blocks.push_back(p);
  }
  CHECK(pool.slabs() == 4);
  CHECK(pool.blocks_in_use() == blocks.size());
  // Each block kept what was written into it.
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const auto* b = static_cast<const unsigned char*>(blocks[i]);
    CHECK((b[0] == (i & 0xFF) && b[111] == (i & 0xFF)));
  }
  // Freeing every block of the first three slabs unmaps all but one spare.
  for (std::size_t i = 0; i < 3 * per_slab; ++i) pool.deallocate(blocks[i]);
  CHECK(pool.slabs() == 2);  // the last block's slab, and the spare
  CHECK(pool.blocks_in_use() == 1);
  // The next blocks come from the partly used slab or the spare: nothing new is mapped.
  std::vector<void*> again;
  for (std::size_t i = 0; i < per_slab; ++i) again.push_back(pool.allocate());
  CHECK(pool.slabs() == 2);
  for (void* p : again) pool.deallocate(p);
  pool.deallocate(blocks.back());
  CHECK(pool.blocks_in_use() == 0);
  CHECK(pool.slabs() == 1);  // the spare
}

TEST_CASE("slab: a map's nodes from a SlabAllocator", "[slab]") {
  SlabPool nodes(32);
  using Map = std::unordered_map<std::uint64_t, std::uint64_t, std::hash<std::uint64_t>, std::equal_to<>,
                                 SlabAllocator<std::pair<const std::uint64_t, std::uint64_t>>>;
  {
    Map m(16, std::hash<std::uint64_t>(), std::equal_to<>(), Map::allocator_type(&nodes));
    for (std::uint64_t i = 0; i < 5000; ++i) m.emplace(i, i * 3);
    CHECK(nodes.blocks_in_use() == 5000);
    for (std::uint64_t i = 0; i < 5000; i += 2) m.erase(i);
    CHECK(nodes.blocks_in_use() == 2500);
    for (std::uint64_t i = 1; i < 5000; i += 2) CHECK(m.at(i) == i * 3);
  }
  CHECK(nodes.blocks_in_use() == 0);
  CHECK(nodes.slabs() <= 1);
}

TEST_CASE("TsapValue: absent, inline, on the heap, copied", "[slab][tsap]") {
  filters::TsapValue t;
  CHECK_FALSE(t);
  CHECK((*t).empty());
  const std::vector<std::uint8_t> short_tsap{'E', 'X', 'C', 'H'};
  t = codec::Bytes(short_tsap);
  REQUIRE(t);
  CHECK(std::vector<std::uint8_t>((*t).begin(), (*t).end()) == short_tsap);
  std::vector<std::uint8_t> long_tsap(200);
  for (std::size_t i = 0; i < long_tsap.size(); ++i) long_tsap[i] = static_cast<std::uint8_t>(i);
  filters::TsapValue l;
  l = codec::Bytes(long_tsap);
  filters::TsapValue copy = l;  // a deep copy: each frees its own
  l = codec::Bytes(short_tsap);
  CHECK(std::vector<std::uint8_t>((*copy).begin(), (*copy).end()) == long_tsap);
  CHECK(std::vector<std::uint8_t>((*l).begin(), (*l).end()) == short_tsap);
  filters::TsapValue empty_present;
  empty_present = codec::Bytes();
  CHECK(empty_present);  // a TSAP parameter of length 0 is there, and empty
  CHECK((*empty_present).empty());
  copy = *copy;  // its own bytes: copied before they are freed
  CHECK(std::vector<std::uint8_t>((*copy).begin(), (*copy).end()) == long_tsap);
  l = *l;
  CHECK(std::vector<std::uint8_t>((*l).begin(), (*l).end()) == short_tsap);
  copy.reset();
  CHECK_FALSE(copy);
  CHECK(sizeof(filters::TsapValue) == 32);
}

TEST_CASE("FilterCounters: three inline, more on the heap, in order", "[slab][counters]") {
  FilterCounters c;
  c.add(7, 1);
  c.add(3, 2);
  c.add(7, 4);
  REQUIRE(c.entries().size() == 2);
  CHECK(c.entries()[0] == FilterCounters::Entry{7, 5});
  CHECK(c.entries()[1] == FilterCounters::Entry{3, 2});
  c.add(9, 1);
  c.add(11, 1);  // a fourth: all move to the heap
  c.add(3, 1);
  REQUIRE(c.entries().size() == 4);
  CHECK(c.entries()[0] == FilterCounters::Entry{7, 5});
  CHECK(c.entries()[1] == FilterCounters::Entry{3, 3});
  CHECK(c.entries()[3] == FilterCounters::Entry{11, 1});
}
