#include "cc/table/huge_pages.h"

#include <sys/mman.h>

#include <cstdint>
#include <new>
#include <stdexcept>

namespace monolith {
namespace {

constexpr size_t kHugePageBytes = size_t{2} << 20;
constexpr size_t kPageBytes = 4096;

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace

void* MapHugePageBuffer(size_t bytes) {
  const size_t length = RoundUp(bytes == 0 ? 1 : bytes, kPageBytes);
  const bool huge = length >= kHugePageBytes;
  // Over-map by one huge page, then trim both ends to a 2 MiB-aligned start.
  const size_t mapped = huge ? length + kHugePageBytes : length;
  void* raw = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  if (!huge) return raw;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = RoundUp(start, kHugePageBytes);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = start + mapped, used_end = aligned + length;
  if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
#ifdef MADV_HUGEPAGE
  // Advice only: without THP the buffer works with small pages.
  madvise(reinterpret_cast<void*>(aligned), length & ~(kHugePageBytes - 1), MADV_HUGEPAGE);
#endif
  return reinterpret_cast<void*>(aligned);
}

void CommitPages(void* data, size_t bytes) {
  for (size_t at = 0; at < bytes; at += kPageBytes) static_cast<volatile char*>(data)[at] = 0;
}

void UnmapHugePageBuffer(void* p, size_t bytes) {
  if (p != nullptr) munmap(p, RoundUp(bytes == 0 ? 1 : bytes, kPageBytes));
}

HugePageSlabs::~HugePageSlabs() {
  for (const Slab& slab : slabs_) UnmapHugePageBuffer(slab.base, kSlabBytes);
  UnmapHugePageBuffer(spare_, kSlabBytes);
}

size_t HugePageSlabs::mapped_bytes() const {
  std::lock_guard<std::mutex> lock(spare_mutex_);
  return (slabs_.size() + (spare_ != nullptr ? 1 : 0)) * kSlabBytes;
}

void HugePageSlabs::PrepareSpare() {
  if (carved_.load(std::memory_order_relaxed) < kSlabBytes / 2) return;
  {
    std::lock_guard<std::mutex> lock(spare_mutex_);
    if (spare_ != nullptr) return;
  }
  // Mapped and committed outside the mutex: Allocate does not wait for it.
  char* slab = static_cast<char*>(MapHugePageBuffer(kSlabBytes));
  CommitPages(slab, kSlabBytes);
  std::lock_guard<std::mutex> lock(spare_mutex_);
  if (spare_ == nullptr) {
    spare_ = slab;
  } else {
    UnmapHugePageBuffer(slab, kSlabBytes);
  }
}

void* HugePageSlabs::Allocate(size_t bytes) {
  if (bytes == 0 || bytes > kSlabBytes / 2 || (bytes & (bytes - 1)) != 0) {
    throw std::invalid_argument("slab buffers are powers of two up to 1 MiB");
  }
  if (!slabs_.empty()) {
    Slab& slab = slabs_.back();
    const size_t offset = RoundUp(slab.next, bytes);
    if (offset + bytes <= kSlabBytes) {
      slab.next = offset + bytes;
      carved_.store(slab.next, std::memory_order_relaxed);
      slab.live += bytes;
      return slab.base + offset;
    }
  }
  slabs_.reserve(slabs_.size() + 1);  // so push_back cannot throw after the mapping
  char* base = nullptr;
  {
    std::lock_guard<std::mutex> lock(spare_mutex_);
    std::swap(base, spare_);
  }
  if (base == nullptr) base = static_cast<char*>(MapHugePageBuffer(kSlabBytes));
  slabs_.push_back(Slab{base, bytes, bytes});
  carved_.store(bytes, std::memory_order_relaxed);
  return base;
}

void HugePageSlabs::Release(void* p, size_t bytes) {
  if (p == nullptr) return;
  const char* at = static_cast<const char*>(p);
  for (size_t i = 0; i < slabs_.size(); ++i) {
    Slab& slab = slabs_[i];
    if (at < slab.base || at >= slab.base + kSlabBytes) continue;
    slab.live -= bytes;
    if (slab.live != 0) return;
    if (i + 1 == slabs_.size()) {
      slab.next = 0;  // the slab carved from: start it over
      carved_.store(0, std::memory_order_relaxed);
    } else {
      UnmapHugePageBuffer(slab.base, kSlabBytes);
      slabs_.erase(slabs_.begin() + static_cast<std::ptrdiff_t>(i));
    }
    return;
  }
}

}  // namespace monolith
