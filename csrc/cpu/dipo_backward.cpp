// CPU DiPO gradient kernel: rewrites z into coef * (q+ - q-), in place.
#include "common.h"
#include "simd.h"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
UNLX_CPU_CLONES void dipo_grad_rows(scalar_t* zs, const scalar_t* rs, const acc_t* threshold, acc_t shift,
                                    const acc_t* ref_max, const acc_t* s_out, const acc_t* s_in, const acc_t* coef,
                                    int64_t begin, int64_t end, int64_t V) {
  for (int64_t row = begin; row < end; ++row) {
    scalar_t* z = zs + row * V;
    const scalar_t* r = rs + row * V;
    const acc_t tau = threshold[row], m = ref_max[row], so = s_out[row], si = s_in[row], c = coef[row];
    const acc_t scale = dipo_scale(so, si, shift);
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) {
      const acc_t rv = static_cast<acc_t>(r[v]);
      z[v] = static_cast<scalar_t>(dipo_grad(rv, rv >= tau, m, so, si, scale, c));
    }
  }
}

}  // namespace

void dipo_grad_cpu_(const at::Tensor& logits, const at::Tensor& ref_logits, const at::Tensor& threshold,
                    const at::Tensor& ref_max, const at::Tensor& s_out, const at::Tensor& s_in, double shift,
                    const at::Tensor& coef) {
  check_ref_args(logits, ref_logits, nullptr,
                 {{threshold, "threshold"}, {ref_max, "ref_max"}, {s_out, "s_out"}, {s_in, "s_in"}, {coef, "coef"}});
  const int64_t rows = logits.size(0), V = logits.size(1);
  const auto t = threshold.contiguous(), m = ref_max.contiguous(), so = s_out.contiguous(), si = s_in.contiguous(),
             c = coef.contiguous();
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "dipo_grad_cpu_", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* z = logits.data_ptr<scalar_t>();
    const scalar_t* r = ref_logits.const_data_ptr<scalar_t>();
    for_rows(rows, [&](int64_t b, int64_t e) {
      dipo_grad_rows<scalar_t, acc_t>(z, r, t.const_data_ptr<acc_t>(), static_cast<acc_t>(shift),
                                      m.const_data_ptr<acc_t>(), so.const_data_ptr<acc_t>(), si.const_data_ptr<acc_t>(),
                                      c.const_data_ptr<acc_t>(), b, e, V);
    });
  });
}

}  // namespace unlearnx
