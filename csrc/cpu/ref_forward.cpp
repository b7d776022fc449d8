// CPU statistics of a policy row z and a reference row r of the same token: both
// log-sum-exps, both target log-probs, and KL(softmax(r) || softmax(z)).
#include <ATen/ops/empty.h>

#include "common.h"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

// The sums of one column range [lo, hi) of a policy row z and a reference row r.
template <typename acc_t, typename scalar_t>
UNLX_ROWS_INLINE void ref_sums(const scalar_t* z, const scalar_t* r, int64_t lo, int64_t hi, acc_t m_z, acc_t m_r,
                               acc_t& s_z, acc_t& s_r, acc_t& cross) {
#pragma omp simd reduction(+ : s_z, s_r, cross)
  for (int64_t v = lo; v < hi; ++v) {
    const acc_t zv = static_cast<acc_t>(z[v]) - m_z, rv = static_cast<acc_t>(r[v]) - m_r;
    const acc_t er = exp_acc(rv);
    s_z += exp_acc(zv);
    s_r += er;
    cross += er * (rv - zv);
  }
}

template <typename scalar_t, typename acc_t>
struct RefRows {
  UNLX_ROWS_INLINE static void run(int64_t begin, int64_t end, const scalar_t* zs, const scalar_t* rs,
                                   const int64_t* target, int64_t V, acc_t* lse, acc_t* ref_lse, acc_t* logp,
                                   acc_t* ref_logp, acc_t* kl) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* z = zs + row * V;
      const scalar_t* r = rs + row * V;
      const int64_t t = target[row];
      const acc_t m_z = row_max<acc_t>(z, V), m_r = row_max<acc_t>(r, V);
      // The non-target sums of z and r, and the cross term over every column (the target's
      // added after the two ranges around it).
      acc_t s_z = 0, s_r = 0, cross = 0;
      ref_sums(z, r, 0, t, m_z, m_r, s_z, s_r, cross);
      ref_sums(z, r, t + 1, V, m_z, m_r, s_z, s_r, cross);
      const acc_t z_t = static_cast<acc_t>(z[t]), r_t = static_cast<acc_t>(r[t]);
      cross += exp_acc(r_t - m_r) * ((r_t - m_r) - (z_t - m_z));
      const RefRowStats<acc_t> st = finish_ref_row(m_z, s_z, z_t, m_r, s_r, r_t, cross);
      lse[row] = st.lse_z;
      ref_lse[row] = st.lse_r;
      logp[row] = st.logp;
      ref_logp[row] = st.logp_ref;
      kl[row] = st.kl;
    }
  }
};

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
    run_rows<RefRows, scalar_t, acc_t>(rows, logits.const_data_ptr<scalar_t>(), ref_logits.const_data_ptr<scalar_t>(),
        t, V, lse.data_ptr<acc_t>(), ref_lse.data_ptr<acc_t>(), logp.data_ptr<acc_t>(), ref_logp.data_ptr<acc_t>(),
        kl.data_ptr<acc_t>());
  });
  return {lse, ref_lse, logp, ref_logp, kl};
}

}  // namespace unlearnx
