// The CUDA source csrc/cuda/conv3x3_wgmma.cu, compiled with the host compiler for the
// simulator (OVERFEAT_SIM selects the simulator's CUDA headers).
#include "../cuda/conv3x3_wgmma.cu"
