// CPU statistics kernel: per row, log-sum-exp and log p(target).
#include <ATen/ops/empty.h>

#include <algorithm>
#include <limits>

#include "common.h"
#include "simd.h"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
UNLX_CPU_CLONES void lse_rows(const scalar_t* z, const int64_t* target, int64_t begin, int64_t end, int64_t V,
                              acc_t* lse, acc_t* logp) {
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* row = z + r * V;
    const int64_t t = target[r];
    // Two sweeps over a cache-resident row (max, then sum-exp of the non-target
    // columns) vectorise, unlike the branchy online update; NaN skips the max but
    // poisons the sum or the target logit.
    acc_t m = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<acc_t>(row[v]));
    acc_t s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t v = 0; v < V; ++v) {
      const acc_t e = exp_acc(static_cast<acc_t>(row[v]) - m);
      s += v == t ? acc_t(0) : e;
    }
    const RowStats<acc_t> st = finish_row(SoftmaxPartial<acc_t>{m, s}, static_cast<acc_t>(row[t]));
    lse[r] = st.lse;
    logp[r] = st.logp_target;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> lse_stats_cpu(const at::Tensor& logits, const at::Tensor& target) {
  check_logits_target(logits, target);
  const auto target_c = target.contiguous();
  const int64_t rows = logits.size(0), V = logits.size(1);
  at::Tensor lse = acc_empty(logits), logp = acc_empty(logits);
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "lse_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t* t = target_c.const_data_ptr<int64_t>();
    check_targets_in_range(t, rows, V);
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    acc_t* lse_p = lse.data_ptr<acc_t>();
    acc_t* logp_p = logp.data_ptr<acc_t>();
    for_rows(rows, [&](int64_t b, int64_t e) { lse_rows<scalar_t, acc_t>(z, t, b, e, V, lse_p, logp_p); });
  });
  return {lse, logp};
}

}  // namespace unlearnx
