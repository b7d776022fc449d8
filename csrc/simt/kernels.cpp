// The CUDA row kernels of csrc/cuda/, compiled by the host compiler under the SIMT shim: the
// same source files nvcc compiles, included whole (tests/test_kernels.py checks that every
// .cu file is listed here). Their host functions come out as *_simt (kernels.h).
#define UNLEARNX_SIMT 1

#include "cuda/dipo_direction.cu"
#include "cuda/logprob_backward.cu"
#include "cuda/lse_forward.cu"
#include "cuda/max_forward.cu"
#include "cuda/ref_backward.cu"
#include "cuda/ref_forward.cu"
