// SIMT shim: the CUDA vocabulary the kernels in csrc/cuda/ use, for the host compiler, so the
// same kernel source runs on the CPU ("simt" backend, tests only). One fiber (a user-level
// thread with its own stack) per CUDA thread of a block; a block's fibers take turns on the
// calling OS thread and switch only at barriers, so __syncthreads and the warp shuffles are
// real rendezvous points. Blocks run one after another. Not a model of warp lock-step: code
// that relies on implicit warp synchrony without a *_sync intrinsic is not emulated.
//
// Why fibers, not one OS thread per CUDA thread: a 256-thread std::barrier costs ~0.5 ms per
// phase on a 2-core machine (measured), which would put the >65535-row grid-stride tests at
// hours; a fiber switch costs nanoseconds and the interleaving is reproducible.
#pragma once

#include <c10/macros/Macros.h>  // before CUDA_KERNEL_ASSERT is redefined below

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace unlearnx::simt {

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// What a kernel sees of the thread it runs as.
struct ThreadContext {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};

const ThreadContext& context();
void sync_block();
// Rendezvous of the calling thread's warp (full mask only); returns the 8-byte value of lane
// (this lane ^ lane_mask).
uint64_t warp_exchange_xor(unsigned mask, uint64_t value, int lane_mask);
[[noreturn]] void kernel_assert_failed(const char* condition, const char* file, int line);

template <typename T>
T shfl_xor(unsigned mask, T value, int lane_mask) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_exchange_xor(mask, bits, lane_mask);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// Runs `body` (a kernel invocation) once per thread of every block of the grid.
using KernelBody = void (*)(void* state);
void run_grid(dim3 grid, dim3 block, KernelBody body, void* state);

}  // namespace unlearnx::simt

using unlearnx::simt::dim3;
using unlearnx::simt::uint3;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define threadIdx (::unlearnx::simt::context().thread_idx)
#define blockIdx (::unlearnx::simt::context().block_idx)
#define blockDim (::unlearnx::simt::context().block_dim)
#define gridDim (::unlearnx::simt::context().grid_dim)
#define __syncthreads() ::unlearnx::simt::sync_block()
#define __shfl_xor_sync(mask, value, lane_mask) ::unlearnx::simt::shfl_xor(mask, value, lane_mask)
#ifdef CUDA_KERNEL_ASSERT
#undef CUDA_KERNEL_ASSERT
#endif
#define CUDA_KERNEL_ASSERT(cond) \
  ((cond) ? static_cast<void>(0) : ::unlearnx::simt::kernel_assert_failed(#cond, __FILE__, __LINE__))
