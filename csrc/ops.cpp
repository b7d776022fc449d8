// Operator schemas, their CPU/CUDA registrations, and the Python module init.
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "kernels.h"

#ifndef UNLEARNX_CUDA_ARCHS
#define UNLEARNX_CUDA_ARCHS ""
#endif

// The row kernels' schemas, one list for both namespaces (unlearnx, unlearnx_simt).
#define UNLEARNX_SCHEMAS(m)                                                                                         \
  m.def("lse_stats(Tensor logits, Tensor target) -> (Tensor lse, Tensor logp_target)"); \
  m.def("logprob_grad_(Tensor(a!) logits, Tensor target, Tensor lse, Tensor logp_target, Tensor coef) -> ()"); \
  m.def("max_stats(Tensor logits) -> (Tensor max, Tensor argmax)"); \
  m.def( \
      "ref_stats(Tensor logits, Tensor ref_logits, Tensor target) -> " \
      "(Tensor lse, Tensor ref_lse, Tensor logp, Tensor ref_logp, Tensor kl)"); \
  m.def( \
      "ref_grad_(Tensor(a!) logits, Tensor ref_logits, Tensor target, Tensor lse, Tensor ref_lse, Tensor logp, " \
      "Tensor ref_logp, Tensor a, Tensor c) -> ()"); \
  m.def("dipo_direction_(Tensor(a!) ref_logits, Tensor? threshold, float shift) -> Tensor offset");

TORCH_LIBRARY(unlearnx, m) { UNLEARNX_SCHEMAS(m) }

#define UNLEARNX_REGISTER(DEVICE)                                  \
  m.impl("lse_stats", &unlearnx::lse_stats_##DEVICE);              \
  m.impl("logprob_grad_", &unlearnx::logprob_grad_##DEVICE##_);    \
  m.impl("max_stats", &unlearnx::max_stats_##DEVICE);              \
  m.impl("ref_stats", &unlearnx::ref_stats_##DEVICE);              \
  m.impl("ref_grad_", &unlearnx::ref_grad_##DEVICE##_);            \
  m.impl("dipo_direction_", &unlearnx::dipo_direction_##DEVICE##_);

TORCH_LIBRARY_IMPL(unlearnx, CPU, m) { UNLEARNX_REGISTER(cpu) }

#ifdef UNLEARNX_WITH_CUDA
TORCH_LIBRARY_IMPL(unlearnx, CUDA, m) { UNLEARNX_REGISTER(cuda) }
#endif

#ifdef UNLEARNX_WITH_SIMT
// The CUDA kernels emulated on the CPU (csrc/simt): same schemas, CPU tensors.
TORCH_LIBRARY(unlearnx_simt, m) { UNLEARNX_SCHEMAS(m) }
TORCH_LIBRARY_IMPL(unlearnx_simt, CPU, m) { UNLEARNX_REGISTER(simt) }
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
#ifdef UNLEARNX_WITH_SIMT
    info["simt"] = true;
#else
    info["simt"] = false;
#endif
    info["cuda_archs"] = std::string(UNLEARNX_CUDA_ARCHS);
    info["torch_version"] = std::string(TORCH_VERSION);
    info["cpu_isa"] = std::string(unlearnx::cpu_isa_name(unlearnx::active_cpu_isa()));
    info["cpu_isas_supported"] = unlearnx::supported_cpu_isas();
    info["cpu_isas_compiled"] = unlearnx::compiled_cpu_isas();
    return info;
  });
  m.def("set_cpu_isa", &unlearnx::set_cpu_isa, pybind11::arg("name"),
        "Selects the CPU row-loop ISA level (auto, avx512, avx2, baseline); returns the previous one.");
}
