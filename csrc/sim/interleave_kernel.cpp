// The CUDA source csrc/cuda/interleave_kernel.cu, compiled with the host compiler for the
// simulator (OVERFEAT_SIM selects the simulator's CUDA headers).
#include "../cuda/interleave_kernel.cu"
