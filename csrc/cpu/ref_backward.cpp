// CPU gradient kernel for policy+reference losses: rewrites z into
// d/dz [a * log p(target) + c * KL(softmax(r) || softmax(z))], in place.
#include "common.h"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
struct RefGradRows {
  UNLX_ROWS_INLINE static void run(int64_t begin, int64_t end, scalar_t* zs, const scalar_t* rs,
                                   const int64_t* target, const acc_t* lse, const acc_t* ref_lse, const acc_t* logp,
                                   const acc_t* ref_logp, const acc_t* a, const acc_t* c, int64_t V) {
    for (int64_t row = begin; row < end; ++row) {
      scalar_t* z = zs + row * V;
      const scalar_t* r = rs + row * V;
      const acc_t lz = lse[row], lr = ref_lse[row], ar = a[row], cr = c[row];
#pragma omp simd
      for (int64_t v = 0; v < V; ++v)
        z[v] = static_cast<scalar_t>(
            ref_grad_other(static_cast<acc_t>(z[v]), static_cast<acc_t>(r[v]), lz, lr, ar, cr));
      z[target[row]] = static_cast<scalar_t>(ref_grad_target(logp[row], ref_logp[row], ar, cr));
    }
  }
};

}  // namespace

void ref_grad_cpu_(const at::Tensor& logits, const at::Tensor& ref_logits, const at::Tensor& target,
                   const at::Tensor& lse, const at::Tensor& ref_lse, const at::Tensor& logp,
                   const at::Tensor& ref_logp, const at::Tensor& a, const at::Tensor& c) {
  check_ref_args(logits, ref_logits, &target,
                 {{lse, "lse"}, {ref_lse, "ref_lse"}, {logp, "logp"}, {ref_logp, "ref_logp"}, {a, "a"}, {c, "c"}});
  const auto target_c = target.contiguous();
  const int64_t rows = logits.size(0), V = logits.size(1);
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "ref_grad_cpu_", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t* t = target_c.const_data_ptr<int64_t>();
    const auto lz = lse.contiguous(), lr = ref_lse.contiguous(), lp = logp.contiguous(),
               lpr = ref_logp.contiguous(), ac = a.contiguous(), cc = c.contiguous();
    run_rows<RefGradRows, scalar_t, acc_t>(rows, logits.data_ptr<scalar_t>(), ref_logits.const_data_ptr<scalar_t>(), t,
                                           lz.const_data_ptr<acc_t>(), lr.const_data_ptr<acc_t>(),
                                           lp.const_data_ptr<acc_t>(), lpr.const_data_ptr<acc_t>(),
                                           ac.const_data_ptr<acc_t>(), cc.const_data_ptr<acc_t>(), V);
  });
}

}  // namespace unlearnx
