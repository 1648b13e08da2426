// The CUDA source csrc/cuda/offset_max_pool2d_kernel.cu, compiled with the host compiler for the
// simulator (OVERFEAT_SIM selects the simulator's CUDA headers).
#include "../cuda/offset_max_pool2d_kernel.cu"
