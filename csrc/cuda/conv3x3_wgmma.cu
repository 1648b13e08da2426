// The host side of the Hopper conv3x3 forward: tensor maps, work units, the launch (and
// split-K's reduction). The kernels are in conv3x3_wgmma.cuh.
#include "conv3x3_wgmma.h"

#include <algorithm>

#include "../checks.h"
#include "../dispatch.h"
#include "conv3x3_wgmma.cuh"
#include "launch.cuh"
#include "tensor_map.cuh"

namespace overfeat_kernels {

static_assert(hopper_conv::kBM == kWgmmaTileM && hopper_conv::kBN == kWgmmaTileN &&
                  hopper_conv::kSliceBytes == kWgmmaSliceBytes,
              "conv_plan.h's Hopper tile");

namespace {

template <typename T>
tma::DType tma_dtype() {
  if constexpr (std::is_same_v<T, float>) {
    return tma::DType::kF32;  // wgmma reads tf32 from it
  } else if constexpr (std::is_same_v<T, at::Half>) {
    return tma::DType::kF16;
  } else {
    return tma::DType::kBF16;
  }
}

// A tiled, zero-filled map of a dense tensor given innermost first.
template <typename T>
tma::TensorMap dense_map(const at::Tensor& t, std::initializer_list<int64_t> dims_inner_first,
                         std::initializer_list<uint32_t> box, hopper::Swizzle swizzle) {
  tma::TensorMapSpec s;
  s.dtype = tma_dtype<T>();
  s.rank = static_cast<uint32_t>(dims_inner_first.size());
  s.global = t.const_data_ptr();
  uint64_t stride = sizeof(T);
  uint32_t i = 0;
  for (const int64_t d : dims_inner_first) {
    s.dims[i] = static_cast<uint64_t>(d);
    s.strides[i] = stride;
    stride *= static_cast<uint64_t>(d);
    ++i;
  }
  i = 0;
  for (const uint32_t b : box) s.box[i++] = b;
  s.swizzle = swizzle;
  s.oob = tma::OobFill::kZero;
  return tma::encode_tensor_map(s);
}

template <auto Kernel>
void allow_dynamic_smem(size_t bytes) {
  if (static_cast<size_t>(kernel_attributes<Kernel>().maxDynamicSharedSizeBytes) < bytes) {
    set_max_dynamic_smem<Kernel>(static_cast<int>(bytes));
  }
}

}  // namespace

template <typename T>
void wgmma_conv(const at::Tensor& in_nhwc, const at::Tensor& filt, const at::Tensor& bias,
                int64_t pad, bool relu, at::Tensor& out, bool out_channels_last,
                const WgmmaConfig& cfg, cudaStream_t stream, const at::Tensor& mask,
                bool tap_chunks) {
  using namespace hopper_conv;
  const int64_t n = in_nhwc.size(0), h = in_nhwc.size(1), w = in_nhwc.size(2);
  const int64_t cp = in_nhwc.size(3);
  // Filters: [K][3][3][cpf] (slices), or tap-major [9][K][cp] (tap chunks).
  const int64_t k = tap_chunks ? filt.size(1) : filt.size(0);
  TORCH_INTERNAL_ASSERT(in_nhwc.is_contiguous() && filt.is_contiguous() && out.size(1) == k &&
                        (cp * int64_t(sizeof(T))) % 16 == 0);
  TORCH_INTERNAL_ASSERT(tap_chunks ? filt.dim() == 3 && filt.size(0) == 9 && filt.size(2) == cp &&
                                         cp * int64_t(sizeof(T)) == kChunkBytes
                                   : filt.dim() == 4 && filt.size(1) == 3 && filt.size(2) == 3 &&
                                         cp <= filt.size(3));
  // The conv pixels the tiles cover: all, or (pooling) those the windows take (offsets:
  // all, in overlapping blocks).
  const int64_t pool = cfg.pool, conv_h = h + 2 * pad - 2, conv_w = w + 2 * pad - 2;
  const bool offsets = cfg.pool_offsets;
  const int64_t out_h = pool == 0 || offsets ? conv_h : conv_h / pool * pool;
  const int64_t out_w = pool == 0 || offsets ? conv_w : conv_w / pool * pool;
  TORCH_INTERNAL_ASSERT((pool == 0 || pool == 2 || pool == 3) &&
                        out.sizes() == at::IntArrayRef(conv3x3_pooled_size(
                                           n, k, conv_h, conv_w, pool, offsets)));
  if (n == 0 || k == 0 || out_h <= 0 || out_w <= 0) return;
  TORCH_INTERNAL_ASSERT(cfg.block_h * cfg.block_w <= kBM && cfg.split >= 1);
  if (pool == 0) {
    TORCH_INTERNAL_ASSERT(cfg.block_h * cfg.block_w == kBM);
  } else if (offsets) {
    // (pool·(a + 1) − 1) x (pool·(b + 1) − 1) pixels (WgmmaConfig).
    TORCH_INTERNAL_ASSERT(cfg.block_h >= 2 * pool - 1 && cfg.block_w >= 2 * pool - 1 &&
                          (cfg.block_h + 1) % pool == 0 && (cfg.block_w + 1) % pool == 0);
  } else {
    TORCH_INTERNAL_ASSERT(cfg.block_h % pool == 0 && cfg.block_w % pool == 0);
  }
  TORCH_INTERNAL_ASSERT(!mask.defined() || (!tap_chunks && !relu && !bias.defined() && pool == 0 &&
                                            mask.is_contiguous() && mask.sizes() == in_nhwc.sizes()));
  const uint32_t bw = cfg.block_w, bh = cfg.block_h;

  Params<T> p{};
  if (tap_chunks) {
    p.in_map = dense_map<T>(in_nhwc, {cp, w, h, n}, {uint32_t(cp), bw, bh, 1}, hopper::Swizzle::kNone);
    p.filt_map = dense_map<T>(filt, {cp, k, 9}, {uint32_t(cp), uint32_t(kBN), uint32_t(kChunks)},
                              hopper::Swizzle::kNone);
    p.c_slices = 1;
  } else {
    constexpr uint32_t kSlice = kSliceElems<T>;
    const int64_t cpf = filt.size(3);
    p.in_map = dense_map<T>(in_nhwc, {cp, w, h, n}, {kSlice, bw, bh, 1}, hopper::Swizzle::k128B);
    p.filt_map = dense_map<T>(filt, {cpf, 9, k}, {kSlice, 1, uint32_t(kBN)}, hopper::Swizzle::k128B);
    if (mask.defined()) {
      p.mask_map = dense_map<T>(mask, {cp, w, h, n}, {kSlice, bw, bh, 1}, hopper::Swizzle::k128B);
    }
    p.c_slices = static_cast<int>(ceil_div(cp * int64_t(sizeof(T)), kSliceBytes));
  }
  p.blocks = offsets ? make_offset_pixel_blocks(n, static_cast<int>(out_h), static_cast<int>(out_w),
                                                static_cast<int>(k), static_cast<int>(pool),
                                                (cfg.block_h + 1) / cfg.pool - 1,
                                                (cfg.block_w + 1) / cfg.pool - 1, kBN)
                     : make_pixel_blocks(n, static_cast<int>(out_h), static_cast<int>(out_w),
                                         static_cast<int>(k), cfg.block_h, cfg.block_w, kBN);
  p.bias = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  p.out = out.mutable_data_ptr<T>();
  p.out_s = strides4(out);
  // A slot's bytes: the boxes of A (block_h·block_w rows; the rest of the kBM rows are not
  // loaded) and the mask, B's box (kBN rows, out-of-bound ones zero-filled and counted).
  const uint32_t rows = bh * bw;
  p.slot_tx = tap_chunks ? kChunks * rows * kChunkBytes + kChunkBBytes
                         : (mask.defined() ? 2 : 1) * rows * kSliceBytes + kBBytes;
  p.pad = static_cast<int>(pad);
  p.split = cfg.split;
  p.pool = static_cast<int>(pool);
  p.relu = relu;
  // Every part reduces at least one slice (choose_wgmma_config's split): an empty part
  // would have nothing to retire and release.
  const int slices = tap_chunks ? 1 : 9 * p.c_slices;
  TORCH_INTERNAL_ASSERT(split_slices(slices, p.split, p.split - 1).begin < slices,
                        "conv3x3 (Hopper): split ", p.split, " of ", slices, " slices leaves a part empty");
  at::Tensor partial;
  if (p.split > 1) {
    partial = at::empty({p.blocks.tiles * p.split, kBM, kBN}, in_nhwc.options().dtype(at::kFloat));
    p.partial = partial.mutable_data_ptr<float>();
  }
  const int64_t units = p.blocks.tiles * p.split;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(units, multiprocessor_count()));
  bool_switch(tap_chunks, [&](auto chunks) {
    bool_switch(out_channels_last, [&](auto cl) {
      bool_switch(mask.defined(), [&](auto masked) {
        bool_switch(pool != 0, [&](auto pooled) {
          constexpr bool kTapChunks = std::remove_reference_t<decltype(chunks)>::value;
          constexpr bool kMasked = std::remove_reference_t<decltype(masked)>::value;
          constexpr bool kPool = std::remove_reference_t<decltype(pooled)>::value;
          // Grad-input reads slices and never pools.
          if constexpr (!(kTapChunks && kMasked) && !(kMasked && kPool)) {
            constexpr auto kernel =
                conv3x3_wgmma_kernel<T, kTapChunks, std::remove_reference_t<decltype(cl)>::value,
                                     kMasked, kPool>;
            constexpr size_t smem = smem_bytes<T, kMasked, kTapChunks>();
            allow_dynamic_smem<kernel>(smem);
            launch_kernel<kernel>(grid, kThreads, smem, stream, p);
          }
        });
      });
    });
  });
  if (p.split > 1) {
    const int per_tile = pool == 0 ? kBM : block_windows(p.blocks, p.pool);
    launch_kernel<split_reduce_kernel<T>>(elementwise_blocks(p.blocks.tiles * per_tile * kBN),
                                          kElementwiseThreads, 0, stream, p);
  }
}

template void wgmma_conv<at::BFloat16>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       int64_t, bool, at::Tensor&, bool, const WgmmaConfig&,
                                       cudaStream_t, const at::Tensor&, bool);
template void wgmma_conv<at::Half>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   int64_t, bool, at::Tensor&, bool, const WgmmaConfig&,
                                   cudaStream_t, const at::Tensor&, bool);
template void wgmma_conv<float>(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                bool, at::Tensor&, bool, const WgmmaConfig&, cudaStream_t,
                                const at::Tensor&, bool);

}  // namespace overfeat_kernels
