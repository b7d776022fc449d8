// CPU statistics kernel: per row, log-sum-exp and log p(target).
#include <ATen/ops/empty.h>

#include "common.h"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
struct LseRows {
  UNLX_ROWS_INLINE static void run(int64_t begin, int64_t end, const scalar_t* z, const int64_t* target, int64_t V,
                                   acc_t* lse, acc_t* logp) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = z + r * V;
      const int64_t t = target[r];
      // Two sweeps over a cache-resident row (max, then sum-exp of the non-target columns,
      // the target's column skipped by splitting the range, not by a per-element compare)
      // vectorise, unlike the branchy online update; NaN skips the max but poisons the sum
      // or the target logit.
      const acc_t m = row_max<acc_t>(row, V);
      acc_t s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t v = 0; v < t; ++v) s += exp_acc(static_cast<acc_t>(row[v]) - m);
#pragma omp simd reduction(+ : s)
      for (int64_t v = t + 1; v < V; ++v) s += exp_acc(static_cast<acc_t>(row[v]) - m);
      const RowStats<acc_t> st = finish_row(SoftmaxPartial<acc_t>{m, s}, static_cast<acc_t>(row[t]));
      lse[r] = st.lse;
      logp[r] = st.logp_target;
    }
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> lse_stats_cpu(const at::Tensor& logits, const at::Tensor& target) {
  check_logits_target(logits, target);
  const auto target_c = target.contiguous();
  const int64_t rows = logits.size(0), V = logits.size(1);
  at::Tensor lse = acc_empty(logits), logp = acc_empty(logits);
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "lse_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t* t = target_c.const_data_ptr<int64_t>();
    run_rows<LseRows, scalar_t, acc_t>(rows, logits.const_data_ptr<scalar_t>(), t, V, lse.data_ptr<acc_t>(),
                                       logp.data_ptr<acc_t>());
  });
  return {lse, logp};
}

}  // namespace unlearnx
