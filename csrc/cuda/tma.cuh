// TMA primitives (PTX ISA 9.7.9.25, "Data movement: bulk and tensor copies"), each a
// named wrapper around its instruction, for sm_90; the simulator's bodies, same names, are
// in csrc/sim/tma_sim.h. Tensor maps come from tensor_map.cuh (encode_tensor_map), passed
// to kernels by value as `const __grid_constant__ tma::TensorMap`.
//
// A load lands on an mbarrier (mbarrier.cuh): the producer announces the bytes with
// mbarrier_arrive_expect_tx(bar, tma::box_bytes(spec)) and issues the load; consumers wait
// on the barrier's phase. Shared memory written by ordinary stores must be fenced with
// fence_proxy_async_shared() (and the writers synchronised) before a TMA store or a wgmma
// reads it.
#pragma once

#include <cstdint>

#include "cuda_headers.cuh"
#include "tensor_map.cuh"

#ifdef OVERFEAT_SIM
#include "../sim/tma_sim.h"
#else
namespace overfeat_kernels {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define OVERFEAT_SM90_ONLY(body) __trap()
#else
#define OVERFEAT_SM90_ONLY(body) body
#endif

namespace tma_detail {
__device__ __forceinline__ uint32_t smem(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
}  // namespace tma_detail

// Tiled loads of the box at coordinates (c0 innermost, ...) into `dst` (128-byte aligned;
// 1024 for a 128B-swizzled box), completing on `bar`.
__device__ __forceinline__ void tma_load_1d(void* dst, const tma::TensorMap* map, uint64_t* bar,
                                            int32_t c0) {
  OVERFEAT_SM90_ONLY(asm volatile(
      "cp.async.bulk.tensor.1d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3}], [%2];" ::"r"(tma_detail::smem(dst)),
      "l"(map), "r"(tma_detail::smem(bar)), "r"(c0)
      : "memory"));
}
__device__ __forceinline__ void tma_load_2d(void* dst, const tma::TensorMap* map, uint64_t* bar,
                                            int32_t c0, int32_t c1) {
  OVERFEAT_SM90_ONLY(asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4}], [%2];" ::"r"(tma_detail::smem(dst)),
      "l"(map), "r"(tma_detail::smem(bar)), "r"(c0), "r"(c1)
      : "memory"));
}
__device__ __forceinline__ void tma_load_3d(void* dst, const tma::TensorMap* map, uint64_t* bar,
                                            int32_t c0, int32_t c1, int32_t c2) {
  OVERFEAT_SM90_ONLY(asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(tma_detail::smem(dst)),
      "l"(map), "r"(tma_detail::smem(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory"));
}
__device__ __forceinline__ void tma_load_4d(void* dst, const tma::TensorMap* map, uint64_t* bar,
                                            int32_t c0, int32_t c1, int32_t c2, int32_t c3) {
  OVERFEAT_SM90_ONLY(asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5, %6}], [%2];" ::"r"(tma_detail::smem(dst)),
      "l"(map), "r"(tma_detail::smem(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory"));
}
__device__ __forceinline__ void tma_load_5d(void* dst, const tma::TensorMap* map, uint64_t* bar,
                                            int32_t c0, int32_t c1, int32_t c2, int32_t c3,
                                            int32_t c4) {
  OVERFEAT_SM90_ONLY(asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5, %6, %7}], [%2];" ::"r"(tma_detail::smem(dst)),
      "l"(map), "r"(tma_detail::smem(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4)
      : "memory"));
}

// An im2col load of an NHWC map: pixels_per_column pixels from the filter base (w, h) of
// image n, shifted by (off_w, off_h), channels c .. c + channels_per_pixel - 1.
__device__ __forceinline__ void tma_load_im2col_4d(void* dst, const tma::TensorMap* map,
                                                   uint64_t* bar, int32_t c, int32_t w, int32_t h,
                                                   int32_t n, uint16_t off_w, uint16_t off_h) {
  OVERFEAT_SM90_ONLY(asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.im2col.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5, %6}], [%2], {%7, %8};" ::"r"(tma_detail::smem(dst)),
      "l"(map), "r"(tma_detail::smem(bar)), "r"(c), "r"(w), "r"(h), "r"(n), "h"(off_w), "h"(off_h)
      : "memory"));
}

// A tiled store of the box at `src` (shared, 128-byte aligned) to coordinates (c0, c1),
// in this thread's bulk async-group; elements outside the tensor are not written.
__device__ __forceinline__ void tma_store_2d(const tma::TensorMap* map, const void* src, int32_t c0,
                                             int32_t c1) {
  OVERFEAT_SM90_ONLY(asm volatile(
      "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];" ::"l"(map),
      "r"(tma_detail::smem(src)), "r"(c0), "r"(c1)
      : "memory"));
}

__device__ __forceinline__ void bulk_commit_group() {
  OVERFEAT_SM90_ONLY(asm volatile("cp.async.bulk.commit_group;" ::: "memory"));
}
// At most N bulk groups pending: their shared memory may be reused (.read) / their global
// writes are done.
template <int N>
__device__ __forceinline__ void bulk_wait_group_read() {
  OVERFEAT_SM90_ONLY(asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory"));
}
template <int N>
__device__ __forceinline__ void bulk_wait_group() {
  OVERFEAT_SM90_ONLY(asm volatile("cp.async.bulk.wait_group %0;" ::"n"(N) : "memory"));
}

// fence.proxy.async.shared::cta: this thread's generic writes to shared memory become
// visible to the async proxy (TMA stores, wgmma operands).
__device__ __forceinline__ void fence_proxy_async_shared() {
  OVERFEAT_SM90_ONLY(asm volatile("fence.proxy.async.shared::cta;" ::: "memory"));
}

// prefetch.tensormap: brings the map into the cache (a hint).
__device__ __forceinline__ void prefetch_tensor_map(const tma::TensorMap* map) {
  OVERFEAT_SM90_ONLY(asm volatile("prefetch.tensormap [%0];" ::"l"(map) : "memory"));
}

#undef OVERFEAT_SM90_ONLY

}  // namespace overfeat_kernels
#endif
