"""The PTX ISA's Hopper layout formulas, written out in Python from the ISA's text, as the
tests' independent reference for csrc/cuda/hopper_layouts.cuh and the simulator's wgmma
and TMA models. Section numbers are those of the PTX ISA 8.x.
"""

from __future__ import annotations

import numpy as np

# Descriptor swizzle-mode field (9.7.15.5.1.2.2): 0 none, 1 128B, 2 64B, 3 32B.
NONE, SW128, SW64, SW32 = 0, 1, 2, 3
SPAN = {NONE: 16, SW128: 128, SW64: 64, SW32: 32}
# 5.5.7 "Swizzling modes": the 16-byte chunk index within a 128-byte row is XORed with
# the row index modulo 8 (128B), 4 (64B) or 2 (32B).
ROWS = {NONE: 1, SW128: 8, SW64: 4, SW32: 2}


def swizzle(address: int, mode: int) -> int:
    chunk = (address >> 4) & 7
    row = (address >> 7) % ROWS[mode]
    return (address & ~0x70) | ((chunk ^ row) << 4)


def encode_desc(start: int, lbo: int, sbo: int, mode: int, base_offset: int = 0) -> int:
    """9.7.15.5.1.2.2: fields (x & 0x3FFFF) >> 4 at bits 0, 16 and 32; base offset at 49;
    the mode at 62."""

    def enc(x: int) -> int:
        return (x & 0x3FFFF) >> 4

    return enc(start) | enc(lbo) << 16 | enc(sbo) << 32 | (base_offset & 7) << 49 | mode << 62


def canonical(k_major: bool, mode: int, lbo: int, sbo: int, elem: int, mn: int, k: int) -> int:
    """Byte offset, before swizzling, of element (mn, k) in the canonical layouts of
    9.7.15.5.1.2.1.3 (CuTe notation in the ISA; T = 16 / elem elements per 16 bytes):

    K-major  none      ((8,m),(T,2k)):((1T,SBO),(1,LBO))
             swizzled  ((8,m),(T,2k)):((SW/16 T,SBO),(1,T))
    MN-major none      ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))
             swizzled  ((T,SW/16,m),(8,k)):((1,T,LBO),(SW/16 T,SBO))
    """
    span = SPAN[mode]
    if k_major:
        kb = k * elem
        row = (mn % 8) * span + (mn // 8) * sbo
        return row + ((kb // 16) * lbo + kb % 16 if mode == NONE else kb)
    mnb = mn * elem
    if mode == NONE:
        return mnb % 16 + (mnb // 16) * sbo + (k % 8) * 16 + (k // 8) * lbo
    return mnb % span + (mnb // span) * lbo + (k % 8) * span + (k // 8) * sbo


def tile_layout(rows: int, k_total: int, elem: int, k_major: bool, mode: int):
    """A whole operand tile (rows x k_total) in one canonical layout: the byte offset of
    every element, the LBO and SBO, and each instruction step's start offset. Steps cover
    32 bytes of K."""
    span = SPAN[mode]
    k_step = 32 // elem
    if k_major:
        if mode == NONE:
            sbo, lbo = 128, rows * 16  # core matrices down the rows; K chunks as slabs
        else:
            sbo, lbo = 8 * span, 16  # LBO unused
        slab = rows * span  # one span of K for all rows
    else:
        if mode == NONE:
            sbo, lbo = 128, (rows * elem // 16) * 128
        else:
            sbo, lbo = 8 * span, k_total * span
    offsets = np.zeros((rows, k_total), dtype=np.int64)
    for r in range(rows):
        for k in range(k_total):
            if k_major and mode != NONE:
                kb = k * elem
                offsets[r, k] = (
                    (kb // span) * slab + canonical(True, mode, lbo, sbo, elem, r, 0) + kb % span
                )
            elif k_major:
                offsets[r, k] = canonical(True, mode, lbo, sbo, elem, r, k)
            else:
                offsets[r, k] = canonical(False, mode, lbo, sbo, elem, r, k)
    starts = []
    for s in range(k_total // k_step):
        if k_major and mode != NONE:
            kb = s * 32
            starts.append((kb // span) * slab + kb % span)
        elif k_major:
            starts.append(s * 2 * lbo)
        else:
            starts.append(s * 2 * (lbo if mode == NONE else sbo))
    return offsets, lbo, sbo, starts


def physical(offsets: np.ndarray, mode: int) -> np.ndarray:
    """The swizzled offsets, for a region that starts at a multiple of 1024."""
    flat = [swizzle(int(x), mode) for x in offsets.ravel()]
    return np.asarray(flat, dtype=np.int64).reshape(offsets.shape)


def fragment_d(t: int, i: int) -> tuple[int, int]:
    """9.7.15.5.1.1 (figures for m64nNk16 D): warp t // 32 holds rows 16 (t // 32) + 0..15
    as N / 8 m16n8 accumulators; lane l: groupID l // 4, column pair 2 (l % 4)."""
    lane, warp = t % 32, t // 32
    return 16 * warp + lane // 4 + 8 * ((i // 2) % 2), 2 * (lane % 4) + i % 2 + 8 * (i // 4)


def fragment_a16(t: int, i: int) -> tuple[int, int]:
    """A in registers, m64nNk16: per warp the m16n8k16 A fragment (a0..a7)."""
    lane, warp = t % 32, t // 32
    return 16 * warp + lane // 4 + 8 * ((i // 2) % 2), 2 * (lane % 4) + i % 2 + 8 * (i // 4)


def fragment_a8_tf32(t: int, i: int) -> tuple[int, int]:
    """A in registers, m64nNk8 tf32: per warp the m16n8k8 A fragment (a0..a3)."""
    lane, warp = t % 32, t // 32
    return 16 * warp + lane // 4 + 8 * (i % 2), lane % 4 + 4 * (i // 2)
