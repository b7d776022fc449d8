// CPU gradient kernel: rewrites a chunk of logits into coef * d log p(target) / dz.
#include "common.h"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
struct LogprobGradRows {
  UNLX_ROWS_INLINE static void run(int64_t begin, int64_t end, scalar_t* z, const int64_t* target, const acc_t* lse,
                                   const acc_t* logp, const acc_t* coef, int64_t V) {
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* row = z + r * V;
      const acc_t l = lse[r], c = coef[r];
#pragma omp simd
      for (int64_t v = 0; v < V; ++v)
        row[v] = static_cast<scalar_t>(logprob_grad_other(static_cast<acc_t>(row[v]), l, c));
      row[target[r]] = static_cast<scalar_t>(logprob_grad_target(logp[r], c));
    }
  }
};

}  // namespace

void logprob_grad_cpu_(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                       const at::Tensor& logp_target, const at::Tensor& coef) {
  check_logits_target(logits, target);
  check_row_vectors(logits, {{lse, "lse"}, {logp_target, "logp_target"}, {coef, "coef"}});
  const auto target_c = target.contiguous();
  const auto lse_c = lse.contiguous(), logp_c = logp_target.contiguous(), coef_c = coef.contiguous();
  const int64_t rows = logits.size(0), V = logits.size(1);
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "logprob_grad_cpu_", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t* t = target_c.const_data_ptr<int64_t>();
    run_rows<LogprobGradRows, scalar_t, acc_t>(rows, logits.data_ptr<scalar_t>(), t, lse_c.const_data_ptr<acc_t>(),
                                               logp_c.const_data_ptr<acc_t>(), coef_c.const_data_ptr<acc_t>(), V);
  });
}

}  // namespace unlearnx
