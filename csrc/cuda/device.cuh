// What a kernel file needs from the device it is built for: nvcc and the CUDA runtime, or the
// host compiler and the SIMT shim (csrc/simt, built with UNLEARNX_SIMT). Kernel files call
// launch() and name their host functions UNLX_DEVICE_FN(...) so that one source serves both.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <utility>

#if defined(UNLEARNX_SIMT)
#include "simt/simt.h"
#define UNLX_DEVICE_FN(name) name##_simt
#define UNLX_DEVICE_FN_(name) name##_simt_
#define UNLX_UNROLL
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define UNLX_DEVICE_FN(name) name##_cuda
#define UNLX_DEVICE_FN_(name) name##_cuda_
#define UNLX_UNROLL _Pragma("unroll")
#endif

namespace unlearnx::device {

#if defined(UNLEARNX_SIMT)

struct Guard {
  explicit Guard(const at::Tensor&) {}
};

// Runs kernel<<<grid, block>>>(args...) on the shim; returns when every block has run.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
  struct Call {
    void (*kernel)(Params...);
    std::tuple<Params...> args;
  } call{kernel, std::tuple<Params...>(args...)};
  simt::run_grid(grid, block, [](void* p) {
    auto* c = static_cast<Call*>(p);
    std::apply(c->kernel, c->args);
  }, &call);
}

#else

struct Guard {
  explicit Guard(const at::Tensor& t) : guard(t.device()) {}
  c10::cuda::CUDAGuard guard;
};

// kernel<<<grid, block>>>(args...) on the current stream, with the launch error checked.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
  kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#endif

}  // namespace unlearnx::device
