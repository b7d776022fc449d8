// CPU max kernel: per row the maximum and its first index (torch.max's tie rule);
// a NaN anywhere in the row is the maximum, at its first position.
#include <ATen/ops/empty.h>

#include <algorithm>
#include <limits>

#include "common.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
struct MaxRows {
  UNLX_ROWS_INLINE static void run(int64_t begin, int64_t end, const scalar_t* z, int64_t V, acc_t* out_max,
                                   int64_t* out_arg) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = z + r * V;
      acc_t m = -std::numeric_limits<acc_t>::infinity();
      int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan)
      for (int64_t v = 0; v < V; ++v) {
        const acc_t x = static_cast<acc_t>(row[v]);
        m = std::max(m, x);
        nan |= x != x;
      }
      int64_t i = 0;
      if (nan) {
        while (!(static_cast<acc_t>(row[i]) != static_cast<acc_t>(row[i]))) ++i;
        m = static_cast<acc_t>(row[i]);
      } else {
        while (static_cast<acc_t>(row[i]) != m) ++i;
      }
      out_max[r] = m;
      out_arg[r] = i;
    }
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> max_stats_cpu(const at::Tensor& logits) {
  check_logits(logits);
  at::Tensor mx = acc_empty(logits);
  at::Tensor arg = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
  const int64_t V = logits.size(1);
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "max_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    run_rows<MaxRows, scalar_t, acc_t>(logits.size(0), logits.const_data_ptr<scalar_t>(), V, mx.data_ptr<acc_t>(),
                                       arg.data_ptr<int64_t>());
  });
  return {mx, arg};
}

}  // namespace unlearnx
