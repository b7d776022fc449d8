// Row kernels over a chunk of logits Z [rows, V] (contiguous, any float dtype).
// Statistics and coefficients are in the accumulation type: fp64 for fp64 logits,
// fp32 otherwise. Targets are already compacted (no ignore_index here).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>
#include <tuple>

namespace unlearnx {

// Runs the lambda with scalar_t (and, inside, acc_t = at::opmath_type<scalar_t>) for every
// logits dtype: fp64, fp32, bf16, fp16.
#define UNLEARNX_DISPATCH_LOGITS(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

inline c10::ScalarType acc_dtype(c10::ScalarType t) {
  return t == c10::kDouble ? c10::kDouble : c10::kFloat;
}

inline void check_logits(const at::Tensor& logits) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "logits: expected a 2-D [rows, V] tensor, got ", logits.dim(), "-D");
  TORCH_CHECK_VALUE(logits.is_contiguous(), "logits: must be contiguous");
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()), "logits: expected a floating dtype, got ",
                   logits.scalar_type());
  TORCH_CHECK_VALUE(logits.size(1) > 0, "logits: vocabulary dimension is empty");
}

inline void check_logits_target(const at::Tensor& logits, const at::Tensor& target) {
  check_logits(logits);
  TORCH_CHECK_TYPE(target.scalar_type() == c10::kLong, "target: expected int64, got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == logits.size(0), "target: expected shape [",
                    logits.size(0), "], got ", target.sizes());
  TORCH_CHECK_VALUE(target.device() == logits.device(), "target: on ", target.device(), ", logits on ",
                    logits.device());
  // Values in [0, V), on every device before any kernel runs: a bad one is an IndexError, never
  // a device-side assert (which would leave the CUDA context unusable). On CUDA this costs one
  // device-to-host copy of a flag per call; the CUDA kernels keep their assert as a second line.
  const int64_t V = logits.size(1);
  if (target.numel() == 0) return;
  const at::Tensor bad = target.lt(0).logical_or_(target.ge(V));
  if (!bad.any().item<bool>()) return;
  const int64_t row = bad.nonzero().select(1, 0).select(0, 0).item<int64_t>();
  TORCH_CHECK_INDEX(false, "target: value ", target.select(0, row).item<int64_t>(), " at row ", row,
                    " is outside [0, ", V, ")");
}

// A per-row output in the accumulation type of the logits.
inline at::Tensor acc_empty(const at::Tensor& logits) {
  return at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
}

inline void check_row_vector(const at::Tensor& t, const char* name, const at::Tensor& logits) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == logits.size(0), name, ": expected shape [", logits.size(0),
                    "], got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == acc_dtype(logits.scalar_type()), name, ": expected ",
                   acc_dtype(logits.scalar_type()), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == logits.device(), name, ": on ", t.device(), ", logits on ", logits.device());
}

inline void check_pair(const at::Tensor& ref_logits, const at::Tensor& logits) {
  TORCH_CHECK_VALUE(ref_logits.sizes() == logits.sizes(), "ref_logits: shape ", ref_logits.sizes(),
                    " differs from logits ", logits.sizes());
  TORCH_CHECK_TYPE(ref_logits.scalar_type() == logits.scalar_type(), "ref_logits: dtype ", ref_logits.scalar_type(),
                   " differs from logits ", logits.scalar_type());
  TORCH_CHECK_VALUE(ref_logits.is_contiguous(), "ref_logits: must be contiguous");
  TORCH_CHECK_VALUE(ref_logits.device() == logits.device(), "ref_logits: on ", ref_logits.device(), ", logits on ",
                    logits.device());
}

struct NamedRow {
  const at::Tensor& tensor;
  const char* name;
};

inline void check_row_vectors(const at::Tensor& logits, std::initializer_list<NamedRow> rows) {
  for (const NamedRow& r : rows) check_row_vector(r.tensor, r.name, logits);
}

// Argument checks of the kernels over a policy and a reference chunk, shared by both devices.
inline void check_ref_args(const at::Tensor& logits, const at::Tensor& ref_logits, const at::Tensor* target,
                           std::initializer_list<NamedRow> rows) {
  if (target != nullptr) {
    check_logits_target(logits, *target);
  } else {
    check_logits(logits);
  }
  check_pair(ref_logits, logits);
  check_row_vectors(logits, rows);
}

// Every row kernel, for each device: DEVICE is cpu or cuda.
#define UNLEARNX_ROW_KERNELS(DEVICE)                                                                             \
  std::tuple<at::Tensor, at::Tensor> lse_stats_##DEVICE(const at::Tensor& logits, const at::Tensor& target);    \
  void logprob_grad_##DEVICE##_(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,      \
                                const at::Tensor& logp_target, const at::Tensor& coef);                         \
  std::tuple<at::Tensor, at::Tensor> max_stats_##DEVICE(const at::Tensor& logits);                              \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ref_stats_##DEVICE(                    \
      const at::Tensor& logits, const at::Tensor& ref_logits, const at::Tensor& target);                        \
  void ref_grad_##DEVICE##_(const at::Tensor& logits, const at::Tensor& ref_logits, const at::Tensor& target,   \
                            const at::Tensor& lse, const at::Tensor& ref_lse, const at::Tensor& logp,           \
                            const at::Tensor& ref_logp, const at::Tensor& a, const at::Tensor& c);              \
  at::Tensor dipo_direction_##DEVICE##_(const at::Tensor& ref_logits, const std::optional<at::Tensor>& threshold,  \
                                        double shift);

// lse_stats: (lse, log p(target)) per row. logprob_grad_: logits <- coef * d log p(target)/dz.
// max_stats: (max, first argmax) per row. ref_stats: (lse, ref_lse, log p(target),
// log p_ref(target), KL(softmax(ref) || softmax(logits))). ref_grad_: logits <- d/dz of
// a * log p(target) + c * KL. dipo_direction_: ref_logits <- g = q+ - q- (DiPO's direction,
// H = the entries >= threshold, per row; no threshold: the row's maximum, i.e. top-1 with ties),
// returns <g, ref_logits> per row.
UNLEARNX_ROW_KERNELS(cpu)
#ifdef UNLEARNX_WITH_CUDA
UNLEARNX_ROW_KERNELS(cuda)
#endif
// The CUDA kernels run on the CPU under the SIMT shim (csrc/simt): CPU tensors, tests only.
#ifdef UNLEARNX_WITH_SIMT
UNLEARNX_ROW_KERNELS(simt)
#endif
}  // namespace unlearnx
