// The one include that picks the CUDA headers: the real ones under nvcc, the simulator's
// stand-ins (csrc/sim/cuda_sim.h) when the same sources are compiled with the host
// compiler into overfeat_kernels._sim.
#pragma once

#ifdef OVERFEAT_SIM
#include "../sim/cuda_sim.h"
#else
// Only light c10 headers: ATen/cuda/CUDAContext.h would pull in cuBLAS / cuSPARSE
// headers, which a minimal CUDA toolkit does not ship and these kernels do not need.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif
