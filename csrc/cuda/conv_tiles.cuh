// Tile schedulers of the tensor-core convolutions: which output pixels and filters a CTA
// tile covers, and, for the persistent kernels, which tiles a CTA takes in turn. Shared by
// the mma.sync implicit GEMM (conv3x3_igemm.cuh: linear runs of pixels, one tile per CTA)
// and the Hopper kernel (conv3x3_wgmma.cuh: 2-D pixel blocks, which a TMA box loads in one
// instruction per filter tap, persistent CTAs), and by their epilogues (conv_epilogue.cuh),
// which store a tile row to the pixel these functions name. Host and device: the launchers
// size grids with the same functions.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "../index_math.h"

namespace overfeat_kernels {

// The output pixel a row of a GEMM tile computes; `valid` false for rows past the map (or,
// pooling, past a tile's last whole window), which load nothing and store nothing.
struct RowPixel {
  bool valid;
  int64_t img;
  int y, x;
};

// A map of out_h x out_w output pixels per image cut into blocks of bh x bw pixels (the
// GEMM rows of a tile: row r is pixel (y0 + r / bw, x0 + r % bw)), times filter tiles of
// `bn` filters. Tile t: filter tile t % k_tiles (fastest, so that CTAs running at the same
// time share a pixel block's input in L2), then block column, block row, image.
// Blocks are sy rows and sx columns apart: bh and bw, or, for offset pooling (off_a > 0),
// less (see "Offset pooling" below).
struct PixelBlocks {
  int bh = 0, bw = 0, bn = 0;
  int out_h = 0, out_w = 0, k = 0;
  int64_t n = 0;
  int blocks_x = 0, blocks_y = 0, k_tiles = 0;
  int64_t tiles = 0;
  int sy = 0, sx = 0;
  int off_a = 0, off_b = 0, pooled_h = 0, pooled_w = 0;
};

C10_HOST_DEVICE inline PixelBlocks make_pixel_blocks(int64_t n, int out_h, int out_w, int k,
                                                     int bh, int bw, int bn) {
  PixelBlocks b;
  b.bh = bh;
  b.bw = bw;
  b.bn = bn;
  b.out_h = out_h;
  b.out_w = out_w;
  b.k = k;
  b.n = n;
  b.blocks_x = (out_w + bw - 1) / bw;
  b.blocks_y = (out_h + bh - 1) / bh;
  b.k_tiles = (k + bn - 1) / bn;
  b.tiles = n * b.blocks_y * b.blocks_x * b.k_tiles;
  b.sy = bh;
  b.sx = bw;
  return b;
}

// Offset pooling (offset_max_pool2d's pool² offsets, conv_pool.h; OffsetPoolBlock in
// conv_plan.h): blocks of (pool·a + pool − 1) x (pool·b + pool − 1) conv pixels, pool·a rows
// and pool·b columns apart, so that neighbouring blocks overlap by pool − 1 (computed by
// both tiles) and every offset's windows at a x b pooled positions lie inside one block.
// out_h x out_w: the conv's map; pooled_h x pooled_w: the positions of each offset.
C10_HOST_DEVICE inline PixelBlocks make_offset_pixel_blocks(int64_t n, int out_h, int out_w, int k,
                                                            int pool, int a, int b, int bn) {
  const int pooled_h = static_cast<int>(pooled_extent(out_h, pool));
  const int pooled_w = static_cast<int>(pooled_extent(out_w, pool));
  PixelBlocks blocks = make_pixel_blocks(n, out_h, out_w, k, pool * (a + 1) - 1,
                                         pool * (b + 1) - 1, bn);
  blocks.sy = pool * a;
  blocks.sx = pool * b;
  blocks.blocks_y = (pooled_h + a - 1) / a;
  blocks.blocks_x = (pooled_w + b - 1) / b;
  blocks.tiles = n * blocks.blocks_y * blocks.blocks_x * blocks.k_tiles;
  blocks.off_a = a;
  blocks.off_b = b;
  blocks.pooled_h = pooled_h;
  blocks.pooled_w = pooled_w;
  return blocks;
}

// Where tile t starts: image, the block's top-left pixel, its first filter.
struct BlockTile {
  int64_t img;
  int y0, x0, k0;
};

C10_HOST_DEVICE inline BlockTile block_tile(const PixelBlocks& b, int64_t t) {
  const int kt = static_cast<int>(t % b.k_tiles);
  int64_t q = t / b.k_tiles;
  const int bx = static_cast<int>(q % b.blocks_x);
  q /= b.blocks_x;
  const int by = static_cast<int>(q % b.blocks_y);
  return {q / b.blocks_y, by * b.sy, bx * b.sx, kt * b.bn};
}

// Rows past the block (bh·bw <= row: a tile with more rows than the block) load and store
// nothing.
C10_HOST_DEVICE inline RowPixel block_row_pixel(const PixelBlocks& b, const BlockTile& t, int row) {
  const int y = t.y0 + row / b.bw, x = t.x0 + row % b.bw;
  return {row < b.bh * b.bw && y < b.out_h && x < b.out_w, t.img, y, x};
}

// A pooling window of a staged tile (the fused pooling of conv_pool.h: k x k windows,
// stride k): its pooled pixel (`valid` false past the pooled map) and the tile row of its
// top-left pixel; its pixel (dy, dx) is row first_row + dy·row_step + dx, row_step being
// the kernel's (igemm: k, windows' pixels consecutive; a pixel block: bw).
struct PooledWindow {
  bool valid;
  int64_t img;
  int y, x;
  int first_row;
};

// Pooling over pixel blocks: the blocks cover the conv pixels that windows take (out_h x
// out_w = pool_h·k x pool_w·k) and bh, bw are multiples of k, so that a block holds
// (bh / k) x (bw / k) whole windows, row by row; row_step is bw. Offset pooling (off_a > 0):
// window win is offset o = win / (a·b) (dy = o / k, dx = o % k) at position win % (a·b)
// of the block (positions fastest: neighbouring threads store neighbouring pixels of one
// offset's map), image (img·k + dy)·k + dx of the pooled output; row_step is bw too.
C10_HOST_DEVICE inline int block_windows(const PixelBlocks& b, int pool) {
  if (b.off_a > 0) return pool * pool * b.off_a * b.off_b;
  return (b.bh / pool) * (b.bw / pool);
}
C10_HOST_DEVICE inline PooledWindow block_window(const PixelBlocks& b, const BlockTile& t, int pool,
                                                 int win) {
  if (b.off_a > 0) {
    const int ab = b.off_a * b.off_b, o = win / ab, pos = win - o * ab;
    const int dy = o / pool, dx = o - dy * pool, i = pos / b.off_b, j = pos - i * b.off_b;
    const int y = t.y0 / pool + i, x = t.x0 / pool + j;  // the pooled position
    return {y < b.pooled_h && x < b.pooled_w, offset_batch(t.img, dy, dx, pool), y, x,
            (dy + pool * i) * b.bw + dx + pool * j};
  }
  const int per_row = b.bw / pool;
  const int wy = win / per_row, wx = win - wy * per_row;
  const int y = t.y0 + wy * pool, x = t.x0 + wx * pool;  // the window's top-left conv pixel
  return {y < b.out_h && x < b.out_w, t.img, y / pool, x / pool, (wy * b.bw + wx) * pool};
}

// Split-K: work unit u of a persistent grid is part u % split of tile u / split; part p
// reduces slices [p·per, min((p + 1)·per, slices)) of the tile's `slices` (per =
// ceil(slices / split), and split is chosen so that no part is empty).
struct SliceRange {
  int begin, end;
};
C10_HOST_DEVICE inline SliceRange split_slices(int slices, int split, int part) {
  const int per = (slices + split - 1) / split;
  const int begin = part * per;
  return {begin, begin + per < slices ? begin + per : slices};
}

}  // namespace overfeat_kernels
