// CPU DiPO statistics: for the top-k set H of each reference row, the partition sums of
// the two shifted reference distributions and Delta = <q+ - q-, z - r>, in one pass.
#include <ATen/ops/empty.h>

#include <algorithm>
#include <limits>

#include "common.h"
#include "simd.h"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
UNLX_CPU_CLONES void dipo_rows(const scalar_t* zs, const scalar_t* rs, const int64_t* top, int64_t k, acc_t shift,
                               int64_t begin, int64_t end, int64_t V, acc_t* ref_max, acc_t* s_plus,
                               acc_t* s_minus, acc_t* delta) {
  for (int64_t row = begin; row < end; ++row) {
    const scalar_t* z = zs + row * V;
    const scalar_t* r = rs + row * V;
    const int64_t* h = top + row * k;
    acc_t m = -std::numeric_limits<acc_t>::infinity();
    for (int64_t j = 0; j < k; ++j) m = std::max(m, static_cast<acc_t>(r[h[j]]));
    acc_t s_all = 0, a_all = 0;
#pragma omp simd reduction(+ : s_all, a_all)
    for (int64_t v = 0; v < V; ++v) {
      const acc_t rv = static_cast<acc_t>(r[v]);
      const acc_t e = exp_acc(rv - m);
      s_all += e;
      a_all += e * (static_cast<acc_t>(z[v]) - rv);
    }
    acc_t s_in = 0, a_in = 0;
    for (int64_t j = 0; j < k; ++j) {
      const acc_t rv = static_cast<acc_t>(r[h[j]]);
      const acc_t e = exp_acc(rv - m);
      s_in += e;
      a_in += e * (static_cast<acc_t>(z[h[j]]) - rv);
    }
    const DipoRowStats<acc_t> st = finish_dipo_row(s_all - s_in, s_in, a_all - a_in, a_in, shift);
    ref_max[row] = m;
    s_plus[row] = st.s_plus;
    s_minus[row] = st.s_minus;
    delta[row] = st.delta;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dipo_stats_cpu(const at::Tensor& logits,
                                                                         const at::Tensor& ref_logits,
                                                                         const at::Tensor& top_idx, double shift) {
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) > 0 && logits.is_contiguous(),
                    "logits: expected a contiguous [rows, V] tensor with V > 0, got ", logits.sizes());
  check_pair(ref_logits, logits);
  check_top_idx(top_idx, logits);
  const int64_t rows = logits.size(0), V = logits.size(1), k = top_idx.size(1);
  at::Tensor ref_max = acc_empty(logits), s_plus = acc_empty(logits), s_minus = acc_empty(logits),
             delta = acc_empty(logits);
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "dipo_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t* h = top_idx.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < rows * k; ++i)
      TORCH_CHECK_INDEX(h[i] >= 0 && h[i] < V, "top_idx: value ", h[i], " is outside [0, ", V, ")");
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    const scalar_t* r = ref_logits.const_data_ptr<scalar_t>();
    acc_t *p0 = ref_max.data_ptr<acc_t>(), *p1 = s_plus.data_ptr<acc_t>(), *p2 = s_minus.data_ptr<acc_t>(),
          *p3 = delta.data_ptr<acc_t>();
    for_rows(rows, [&](int64_t b, int64_t e) {
      dipo_rows<scalar_t, acc_t>(z, r, h, k, static_cast<acc_t>(shift), b, e, V, p0, p1, p2, p3);
    });
  });
  return {ref_max, s_plus, s_minus, delta};
}

}  // namespace unlearnx
