// CPU DiPO gradient kernel: rewrites z into coef * (q+ - q-), in place.
#include "common.h"
#include "simd.h"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
UNLX_CPU_CLONES void dipo_grad_rows(scalar_t* zs, const scalar_t* rs, const int64_t* top, int64_t k, acc_t shift,
                                    const acc_t* ref_max, const acc_t* s_plus, const acc_t* s_minus,
                                    const acc_t* coef, int64_t begin, int64_t end, int64_t V) {
  const acc_t down = exp_acc(-shift), up = exp_acc(shift);
  for (int64_t row = begin; row < end; ++row) {
    scalar_t* z = zs + row * V;
    const scalar_t* r = rs + row * V;
    const acc_t m = ref_max[row], sp = s_plus[row], sm = s_minus[row], c = coef[row];
#pragma omp simd
    for (int64_t v = 0; v < V; ++v)
      z[v] = static_cast<scalar_t>(dipo_grad(static_cast<acc_t>(r[v]), m, sp, sm, acc_t(1), acc_t(1), c));
    for (int64_t j = 0; j < k; ++j) {
      const int64_t h = top[row * k + j];
      z[h] = static_cast<scalar_t>(dipo_grad(static_cast<acc_t>(r[h]), m, sp, sm, down, up, c));
    }
  }
}

}  // namespace

void dipo_grad_cpu_(const at::Tensor& logits, const at::Tensor& ref_logits, const at::Tensor& top_idx,
                    const at::Tensor& ref_max, const at::Tensor& s_plus, const at::Tensor& s_minus, double shift,
                    const at::Tensor& coef) {
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) > 0 && logits.is_contiguous(),
                    "logits: expected a contiguous [rows, V] tensor with V > 0, got ", logits.sizes());
  check_pair(ref_logits, logits);
  check_top_idx(top_idx, logits);
  const at::Tensor* rowvecs[] = {&ref_max, &s_plus, &s_minus, &coef};
  const char* names[] = {"ref_max", "s_plus", "s_minus", "coef"};
  for (int i = 0; i < 4; ++i) check_row_vector(*rowvecs[i], names[i], logits);
  const int64_t rows = logits.size(0), V = logits.size(1), k = top_idx.size(1);
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "dipo_grad_cpu_", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t* h = top_idx.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < rows * k; ++i)
      TORCH_CHECK_INDEX(h[i] >= 0 && h[i] < V, "top_idx: value ", h[i], " is outside [0, ", V, ")");
    const auto m = ref_max.contiguous(), sp = s_plus.contiguous(), sm = s_minus.contiguous(), c = coef.contiguous();
    scalar_t* z = logits.data_ptr<scalar_t>();
    const scalar_t* r = ref_logits.const_data_ptr<scalar_t>();
    for_rows(rows, [&](int64_t b, int64_t e) {
      dipo_grad_rows<scalar_t, acc_t>(z, r, h, k, static_cast<acc_t>(shift), m.const_data_ptr<acc_t>(),
                                      sp.const_data_ptr<acc_t>(), sm.const_data_ptr<acc_t>(),
                                      c.const_data_ptr<acc_t>(), b, e, V);
    });
  });
}

}  // namespace unlearnx
