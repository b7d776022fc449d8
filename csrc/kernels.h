// Row kernels over a chunk of logits Z [rows, V] (contiguous, any float dtype).
// Statistics and coefficients are in the accumulation type: fp64 for fp64 logits,
// fp32 otherwise. Targets are already compacted (no ignore_index here).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <tuple>

namespace unlearnx {

inline c10::ScalarType acc_dtype(c10::ScalarType t) {
  return t == c10::kDouble ? c10::kDouble : c10::kFloat;
}

inline void check_logits_target(const at::Tensor& logits, const at::Tensor& target) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "logits: expected a 2-D [rows, V] tensor, got ", logits.dim(), "-D");
  TORCH_CHECK_VALUE(logits.is_contiguous(), "logits: must be contiguous");
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()), "logits: expected a floating dtype, got ",
                   logits.scalar_type());
  TORCH_CHECK_VALUE(logits.size(1) > 0, "logits: vocabulary dimension is empty");
  TORCH_CHECK_TYPE(target.scalar_type() == c10::kLong, "target: expected int64, got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == logits.size(0), "target: expected shape [",
                    logits.size(0), "], got ", target.sizes());
  TORCH_CHECK_VALUE(target.device() == logits.device(), "target: on ", target.device(), ", logits on ",
                    logits.device());
}

inline void check_row_vector(const at::Tensor& t, const char* name, const at::Tensor& logits) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == logits.size(0), name, ": expected shape [", logits.size(0),
                    "], got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == acc_dtype(logits.scalar_type()), name, ": expected ",
                   acc_dtype(logits.scalar_type()), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == logits.device(), name, ": on ", t.device(), ", logits on ", logits.device());
}

// (lse [rows], log p(target) [rows]) of each row.
std::tuple<at::Tensor, at::Tensor> lse_stats_cpu(const at::Tensor& logits, const at::Tensor& target);
// logits <- coef * d log softmax(logits)[target] / d logits, in place, from the row's
// lse and log p(target) as returned by lse_stats.
void logprob_grad_cpu_(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                       const at::Tensor& logp_target, const at::Tensor& coef);

#ifdef UNLEARNX_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> lse_stats_cuda(const at::Tensor& logits, const at::Tensor& target);
void logprob_grad_cuda_(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                        const at::Tensor& logp_target, const at::Tensor& coef);
#endif

}  // namespace unlearnx
