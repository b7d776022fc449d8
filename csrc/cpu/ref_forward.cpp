// CPU statistics of a policy row z and a reference row r of the same token: both
// log-sum-exps, both target log-probs, and KL(softmax(r) || softmax(z)).
#include <ATen/ops/empty.h>

#include <algorithm>
#include <limits>

#include "common.h"
#include "simd.h"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
UNLX_CPU_CLONES void ref_rows(const scalar_t* zs, const scalar_t* rs, const int64_t* target, int64_t begin,
                              int64_t end, int64_t V, acc_t* lse, acc_t* ref_lse, acc_t* logp, acc_t* ref_logp,
                              acc_t* kl) {
  for (int64_t row = begin; row < end; ++row) {
    const scalar_t* z = zs + row * V;
    const scalar_t* r = rs + row * V;
    const int64_t t = target[row];
    acc_t m_z = -std::numeric_limits<acc_t>::infinity(), m_r = m_z;
#pragma omp simd reduction(max : m_z, m_r)
    for (int64_t v = 0; v < V; ++v) {
      m_z = std::max(m_z, static_cast<acc_t>(z[v]));
      m_r = std::max(m_r, static_cast<acc_t>(r[v]));
    }
    acc_t s_z = 0, s_r = 0, cross = 0;
#pragma omp simd reduction(+ : s_z, s_r, cross)
    for (int64_t v = 0; v < V; ++v) {
      const acc_t zv = static_cast<acc_t>(z[v]), rv = static_cast<acc_t>(r[v]);
      const acc_t ez = exp_acc(zv - m_z), er = exp_acc(rv - m_r);
      s_z += v == t ? acc_t(0) : ez;
      s_r += v == t ? acc_t(0) : er;
      cross += er * (rv - zv);
    }
    const RefRowStats<acc_t> st = finish_ref_row(m_z, s_z, static_cast<acc_t>(z[t]), m_r, s_r,
                                                 static_cast<acc_t>(r[t]), cross);
    lse[row] = st.lse_z;
    ref_lse[row] = st.lse_r;
    logp[row] = st.logp;
    ref_logp[row] = st.logp_ref;
    kl[row] = st.kl;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ref_stats_cpu(const at::Tensor& logits,
                                                                                     const at::Tensor& ref_logits,
                                                                                     const at::Tensor& target) {
  check_ref_args(logits, ref_logits, &target, {});
  const auto target_c = target.contiguous();
  const int64_t rows = logits.size(0), V = logits.size(1);
  at::Tensor lse = acc_empty(logits), ref_lse = acc_empty(logits), logp = acc_empty(logits),
             ref_logp = acc_empty(logits), kl = acc_empty(logits);
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "ref_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t* t = target_c.const_data_ptr<int64_t>();
    check_targets_in_range(t, rows, V);
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    const scalar_t* r = ref_logits.const_data_ptr<scalar_t>();
    acc_t *p0 = lse.data_ptr<acc_t>(), *p1 = ref_lse.data_ptr<acc_t>(), *p2 = logp.data_ptr<acc_t>(),
          *p3 = ref_logp.data_ptr<acc_t>(), *p4 = kl.data_ptr<acc_t>();
    for_rows(rows, [&](int64_t b, int64_t e) { ref_rows<scalar_t, acc_t>(z, r, t, b, e, V, p0, p1, p2, p3, p4); });
  });
  return {lse, ref_lse, logp, ref_logp, kl};
}

}  // namespace unlearnx
