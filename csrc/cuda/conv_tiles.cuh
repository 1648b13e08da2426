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
struct PixelBlocks {
  int bh = 0, bw = 0, bn = 0;
  int out_h = 0, out_w = 0, k = 0;
  int64_t n = 0;
  int blocks_x = 0, blocks_y = 0, k_tiles = 0;
  int64_t tiles = 0;
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
  return b;
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
  return {q / b.blocks_y, by * b.bh, bx * b.bw, kt * b.bn};
}

C10_HOST_DEVICE inline RowPixel block_row_pixel(const PixelBlocks& b, const BlockTile& t, int row) {
  const int y = t.y0 + row / b.bw, x = t.x0 + row % b.bw;
  return {y < b.out_h && x < b.out_w, t.img, y, x};
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
// (bh / k) x (bw / k) whole windows, row by row; row_step is bw.
C10_HOST_DEVICE inline int block_windows(const PixelBlocks& b, int pool) {
  return (b.bh / pool) * (b.bw / pool);
}
C10_HOST_DEVICE inline PooledWindow block_window(const PixelBlocks& b, const BlockTile& t, int pool,
                                                 int win) {
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
