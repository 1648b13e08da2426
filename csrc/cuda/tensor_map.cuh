// TMA tensor maps, built on the host by one function in both builds: the limits the CUDA
// driver checks (cuTensorMapEncodeTiled / cuTensorMapEncodeIm2col, Driver API "Tensor
// Map Object Management"; PTX ISA 5.5 "Tensors") are checked here first, with errors that
// name the argument; then the driver encodes the map under nvcc, and the simulator keeps
// the validated description, which its TMA model (csrc/sim/tma_model.cpp) walks.
//
// Dimension 0 is the innermost (contiguous) one throughout, as in the driver and in PTX.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

#include "cuda_headers.cuh"
#include "hopper_layouts.cuh"

#ifndef OVERFEAT_SIM
#include <cuda.h>
#include <cudaTypedefs.h>
#endif

namespace overfeat_kernels::tma {

enum class DType : uint8_t { kU8, kU16, kU32, kF16, kBF16, kF32, kTF32 };

inline uint32_t dtype_bytes(DType t) {
  switch (t) {
    case DType::kU8: return 1;
    case DType::kU16: case DType::kF16: case DType::kBF16: return 2;
    default: return 4;
  }
}

enum class Mode : uint8_t { kTiled, kIm2col };
enum class OobFill : uint8_t { kZero, kNaN };

// What a tensor map describes (the driver's arguments, validated).
struct TensorMapSpec {
  Mode mode = Mode::kTiled;
  DType dtype = DType::kBF16;
  uint32_t rank = 0;
  const void* global = nullptr;
  uint64_t dims[5] = {};      // elements per dimension
  uint64_t strides[5] = {};   // bytes; strides[0] is the element size
  uint32_t box[5] = {};       // tiled: elements per dimension of the box
  uint32_t element_strides[5] = {1, 1, 1, 1, 1};
  hopper::Swizzle swizzle = hopper::Swizzle::kNone;
  OobFill oob = OobFill::kZero;
  // im2col: corners of the bounding box per spatial dimension (W, H, D), innermost first;
  // channels and pixels per load.
  int32_t lower[3] = {}, upper[3] = {};
  uint32_t channels_per_pixel = 0, pixels_per_column = 0;
};

// Bytes one load of this map writes to shared memory (its complete-tx count).
inline uint32_t box_bytes(const TensorMapSpec& s) {
  const uint32_t e = dtype_bytes(s.dtype);
  if (s.mode == Mode::kIm2col) return s.channels_per_pixel * s.pixels_per_column * e;
  uint64_t n = e;
  for (uint32_t i = 0; i < s.rank; ++i) {
    const uint32_t es = i == 0 ? 1 : s.element_strides[i];
    n *= (s.box[i] + es - 1) / es;
  }
  return static_cast<uint32_t>(n);
}

// The driver's limits, as errors naming the argument.
inline void check_spec(const TensorMapSpec& s) {
  const bool im2col = s.mode == Mode::kIm2col;
  const std::string what = im2col ? "tensor map (im2col): " : "tensor map (tiled): ";
  TORCH_CHECK(im2col ? s.rank >= 3 && s.rank <= 5 : s.rank >= 1 && s.rank <= 5, what, "rank ", s.rank,
              im2col ? " is not 3, 4 or 5" : " is not in [1, 5]");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(s.global) % 16 == 0, what,
              "the global address must be 16-byte aligned");
  const uint32_t e = dtype_bytes(s.dtype);
  TORCH_CHECK(s.strides[0] == e, what, "strides[0] must be the element size, ", e, " bytes");
  for (uint32_t i = 0; i < s.rank; ++i) {
    TORCH_CHECK(s.dims[i] >= 1 && s.dims[i] <= (uint64_t(1) << 32), what, "dims[", i, "] = ",
                s.dims[i], " is not in [1, 2^32]");
    if (i > 0) {
      TORCH_CHECK(s.strides[i] % 16 == 0 && s.strides[i] < (uint64_t(1) << 40), what, "strides[", i,
                  "] = ", s.strides[i], " bytes is not a multiple of 16 below 2^40");
    }
    TORCH_CHECK(s.element_strides[i] >= 1 && s.element_strides[i] <= 8, what, "element_strides[",
                i, "] = ", s.element_strides[i], " is not in [1, 8]");
  }
  const uint32_t span = hopper::swizzle_bytes(s.swizzle);
  if (im2col) {
    const uint32_t spatial = s.rank - 2;
    const int32_t limit = s.rank == 3 ? 32768 : s.rank == 4 ? 128 : 16;
    for (uint32_t i = 0; i < spatial; ++i) {
      for (const int32_t c : {s.lower[i], s.upper[i]}) {
        TORCH_CHECK(c >= -limit && c < limit, what, "a pixel-box corner of spatial dimension ", i,
                    " is ", c, ", outside [", -limit, ", ", limit - 1, "] for rank ", s.rank);
      }
      TORCH_CHECK(int64_t(s.dims[i + 1]) + s.upper[i] - s.lower[i] > 0, what,
                  "the pixel box of spatial dimension ", i, " is empty");
    }
    TORCH_CHECK(s.element_strides[s.rank - 1] == 1, what, "the batch dimension's element stride must be 1");
    TORCH_CHECK(s.channels_per_pixel >= 1 && s.channels_per_pixel <= 256, what,
                "channels_per_pixel = ", s.channels_per_pixel, " is not in [1, 256]");
    TORCH_CHECK(s.pixels_per_column >= 1 && s.pixels_per_column <= 1024, what,
                "pixels_per_column = ", s.pixels_per_column, " is not in [1, 1024]");
    const uint32_t inner = s.channels_per_pixel * e;
    TORCH_CHECK(inner % 16 == 0, what, "channels_per_pixel x element size = ", inner,
                " bytes is not a multiple of 16");
    TORCH_CHECK(s.swizzle == hopper::Swizzle::kNone || inner <= span, what, "a pixel's ", inner,
                " bytes exceed the ", span, "-byte swizzle span");
  } else {
    for (uint32_t i = 0; i < s.rank; ++i) {
      TORCH_CHECK(s.box[i] >= 1 && s.box[i] <= 256, what, "box[", i, "] = ", s.box[i],
                  " is not in [1, 256]");
    }
    const uint32_t inner = s.box[0] * e;
    TORCH_CHECK(inner % 16 == 0, what, "box[0] x element size = ", inner,
                " bytes is not a multiple of 16");
    TORCH_CHECK(s.swizzle == hopper::Swizzle::kNone || inner <= span, what, "box[0] x element size = ",
                inner, " bytes exceeds the ", span, "-byte swizzle span");
  }
  TORCH_CHECK(s.oob == OobFill::kZero || s.dtype == DType::kF16 || s.dtype == DType::kBF16 ||
                  s.dtype == DType::kF32 || s.dtype == DType::kTF32,
              what, "NaN out-of-bound fill needs a floating-point type");
}

#ifdef OVERFEAT_SIM
// The simulator's CUtensorMap: the validated description (passed to kernels by value, as
// a __grid_constant__ CUtensorMap is).
struct alignas(64) TensorMap {
  TensorMapSpec spec;
};
#else
using TensorMap = CUtensorMap;

namespace detail {
inline CUtensorMapDataType driver_dtype(DType t) {
  switch (t) {
    case DType::kU8: return CU_TENSOR_MAP_DATA_TYPE_UINT8;
    case DType::kU16: return CU_TENSOR_MAP_DATA_TYPE_UINT16;
    case DType::kU32: return CU_TENSOR_MAP_DATA_TYPE_UINT32;
    case DType::kF16: return CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    case DType::kBF16: return CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    case DType::kF32: return CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
    case DType::kTF32: return CU_TENSOR_MAP_DATA_TYPE_TFLOAT32;
  }
  return CU_TENSOR_MAP_DATA_TYPE_UINT8;
}
inline CUtensorMapSwizzle driver_swizzle(hopper::Swizzle s) {
  switch (s) {
    case hopper::Swizzle::k32B: return CU_TENSOR_MAP_SWIZZLE_32B;
    case hopper::Swizzle::k64B: return CU_TENSOR_MAP_SWIZZLE_64B;
    case hopper::Swizzle::k128B: return CU_TENSOR_MAP_SWIZZLE_128B;
    default: return CU_TENSOR_MAP_SWIZZLE_NONE;
  }
}
// The driver's entry points through the runtime (no link against libcuda).
template <typename Fn>
Fn driver_function(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
  C10_CUDA_CHECK(cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &found));
#else
  C10_CUDA_CHECK(cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, &found));
#endif
  TORCH_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr, "overfeat_kernels: the CUDA "
              "driver has no ", name, " (TMA needs a driver for CUDA 12.0 or newer)");
  return reinterpret_cast<Fn>(fn);
}
}  // namespace detail
#endif

// Encodes `spec` (checked first) into a tensor map for the kernels.
inline TensorMap encode_tensor_map(const TensorMapSpec& spec) {
  check_spec(spec);
#ifdef OVERFEAT_SIM
  TensorMap map;
  map.spec = spec;
  return map;
#else
  TensorMap map;
  cuuint64_t dims[5], strides[4];
  cuuint32_t box[5], es[5];
  for (uint32_t i = 0; i < spec.rank; ++i) {
    dims[i] = spec.dims[i];
    if (i > 0) strides[i - 1] = spec.strides[i];
    box[i] = spec.box[i];
    es[i] = spec.element_strides[i];
  }
  const auto oob = spec.oob == OobFill::kNaN ? CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA
                                             : CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE;
  CUresult r;
  if (spec.mode == Mode::kTiled) {
    static const auto fn = detail::driver_function<PFN_cuTensorMapEncodeTiled_v12000>("cuTensorMapEncodeTiled");
    r = fn(&map, detail::driver_dtype(spec.dtype), spec.rank, const_cast<void*>(spec.global), dims,
           strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE, detail::driver_swizzle(spec.swizzle),
           CU_TENSOR_MAP_L2_PROMOTION_L2_128B, oob);
  } else {
    static const auto fn = detail::driver_function<PFN_cuTensorMapEncodeIm2col_v12000>("cuTensorMapEncodeIm2col");
    r = fn(&map, detail::driver_dtype(spec.dtype), spec.rank, const_cast<void*>(spec.global), dims,
           strides, spec.lower, spec.upper, spec.channels_per_pixel, spec.pixels_per_column, es,
           CU_TENSOR_MAP_INTERLEAVE_NONE, detail::driver_swizzle(spec.swizzle),
           CU_TENSOR_MAP_L2_PROMOTION_L2_128B, oob);
  }
  TORCH_CHECK(r == CUDA_SUCCESS, "overfeat_kernels: the CUDA driver refused a tensor map (error ",
              static_cast<int>(r), ") that passed the documented checks");
  return map;
#endif
}

}  // namespace overfeat_kernels::tma
