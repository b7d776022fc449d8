// Operator schemas, their CPU/CUDA registrations, and the Python module init.
#include <torch/extension.h>
#include <torch/library.h>

#include "kernels.h"

#ifndef UNLEARNX_CUDA_ARCHS
#define UNLEARNX_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(unlearnx, m) {
  m.def("lse_stats(Tensor logits, Tensor target) -> (Tensor lse, Tensor logp_target)");
  m.def("logprob_grad_(Tensor(a!) logits, Tensor target, Tensor lse, Tensor logp_target, Tensor coef) -> ()");
}

TORCH_LIBRARY_IMPL(unlearnx, CPU, m) {
  m.impl("lse_stats", &unlearnx::lse_stats_cpu);
  m.impl("logprob_grad_", &unlearnx::logprob_grad_cpu_);
}

#ifdef UNLEARNX_WITH_CUDA
TORCH_LIBRARY_IMPL(unlearnx, CUDA, m) {
  m.impl("lse_stats", &unlearnx::lse_stats_cuda);
  m.impl("logprob_grad_", &unlearnx::logprob_grad_cuda_);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "unlearnx row kernels (registered as torch.ops.unlearnx.*)";
  m.def("build_info", [] {
    pybind11::dict info;
    info["cpu"] = true;
#ifdef UNLEARNX_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cuda_archs"] = std::string(UNLEARNX_CUDA_ARCHS);
    info["torch_version"] = std::string(TORCH_VERSION);
    return info;
  });
}
