// Per-row softmax math shared by the CPU and CUDA kernels: one source of truth
// for the statistics (online max / sum-exp partials) and for the gradient of
// log p(target) with respect to a row of logits.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__CUDACC__)
#define UNLX_HD __host__ __device__ __forceinline__
#else
#define UNLX_HD inline
#endif

namespace unlearnx {

// exp() for the accumulation type. On the host the fp32 version is a
// range-reduced polynomial (Cephes expf, about 1 ulp on [-87, 0]) written without
// calls or branches so that compilers vectorise the row loops with it; the
// argument of every exp in the kernels is z - max <= 0. fp64 keeps std::exp so
// fp64 gradcheck sees the libm result. On the device, expf/exp are used.
UNLX_HD double exp_acc(double x) { return exp(x); }

UNLX_HD float exp_acc(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  const float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;
  const float kLn2Lo = -2.12194440e-4f;
  const bool underflow = x < -87.0f;
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = x * kLog2e + kMagic;
  const float n = t - kMagic;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t ti, mi;
  std::memcpy(&ti, &t, sizeof ti);
  std::memcpy(&mi, &kMagic, sizeof mi);
  const int32_t bits = (ti - mi + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return underflow ? 0.0f : p * scale;
#endif
}

UNLX_HD double log_acc(double x) { return log(x); }
UNLX_HD float log_acc(float x) { return logf(x); }
UNLX_HD double log1p_acc(double x) { return log1p(x); }
UNLX_HD float log1p_acc(float x) { return log1pf(x); }
UNLX_HD double expm1_acc(double x) { return expm1(x); }
UNLX_HD float expm1_acc(float x) { return expm1f(x); }

// Mergeable softmax partial of a slice of a row: its max and sum exp(z - max).
// Merging is associative, so vocabulary tiles (and later vocabulary shards across
// ranks) reduce in any tree order.
template <typename acc_t>
struct SoftmaxPartial {
  acc_t max;
  acc_t sumexp;
};

template <typename acc_t>
UNLX_HD SoftmaxPartial<acc_t> softmax_empty() {
  return {-std::numeric_limits<acc_t>::infinity(), acc_t(0)};
}

template <typename acc_t>
UNLX_HD SoftmaxPartial<acc_t> softmax_merge(SoftmaxPartial<acc_t> a, SoftmaxPartial<acc_t> b) {
  // A NaN logit poisons the row, as in torch. Tested first: a partial whose max is NaN fails
  // every comparison below and would be taken for an empty side and dropped (found by running
  // the CUDA kernels under the SIMT shim: a NaN first seen by a thread vanished from its block).
  if (a.max != a.max || b.max != b.max) return {a.max + b.max, a.max + b.max};
  if (a.max < b.max) {
    SoftmaxPartial<acc_t> t = a;
    a = b;
    b = t;
  }
  // a.max is the larger; an empty side contributes exp(-inf) = 0.
  if (b.max == -std::numeric_limits<acc_t>::infinity()) return a;
  return {a.max, a.sumexp + b.sumexp * exp_acc(b.max - a.max)};
}

template <typename acc_t>
UNLX_HD SoftmaxPartial<acc_t> softmax_push(SoftmaxPartial<acc_t> a, acc_t z) {
  return softmax_merge(a, SoftmaxPartial<acc_t>{z, acc_t(1)});
}

// m + log(s), rounded once: the gradient kernels form every p_v as exp(z_v - lse), so each
// ulp the log-sum-exp is off is a relative error of ulp(lse) (~|lse| eps) in every
// probability; two fp32 roundings (log, then the sum) make it one ulp off on some rows.
template <typename acc_t>
UNLX_HD acc_t max_plus_log(acc_t m, acc_t s) {
  return static_cast<acc_t>(static_cast<double>(m) + log(static_cast<double>(s)));
}

template <typename acc_t>
struct RowStats {
  acc_t lse;
  acc_t logp_target;
};

// Row statistics from the partial of the non-target columns and the target logit.
// Keeping the target out of the sum is what makes log p_y accurate when p_y is
// close to 1 (memorised forget data): log p_y = -log1p(sum_{v!=y} exp(z_v - z_y))
// has no cancellation, whereas z_y - lse rounds to 0 once 1 - p_y < ulp(lse).
template <typename acc_t>
UNLX_HD RowStats<acc_t> finish_row(SoftmaxPartial<acc_t> others, acc_t z_target) {
  const SoftmaxPartial<acc_t> all = softmax_merge(others, SoftmaxPartial<acc_t>{z_target, acc_t(0)});
  const acc_t m = all.max;
  RowStats<acc_t> out;
  // No finite maximum (a NaN, a +inf, or every logit -inf): log_softmax is NaN on the whole
  // row in torch too. Decided here, once for every kernel, because the CPU sums cannot tell a
  // +inf's exp(inf - inf) from a NaN logit and the block merges see them differently.
  if (!(m - m == acc_t(0))) {
    out.lse = out.logp_target = std::numeric_limits<acc_t>::quiet_NaN();
    return out;
  }
  const acc_t s_other = all.sumexp;  // the non-target sum, rescaled to m
  const acc_t d = z_target - m;      // <= 0
  const acc_t e_target = exp_acc(d);
  out.lse = max_plus_log(m, e_target + s_other);
  // The log1p form only where p_y > 1/2 (r < 1): elsewhere the direct form is the
  // more accurate one, and exp(-d) could overflow for a target far below the max.
  const acc_t r = d > acc_t(-1) ? s_other * exp_acc(-d) : acc_t(2);
  out.logp_target = r < acc_t(1) ? -log1p_acc(r) : d - log_acc(e_target + s_other);
  return out;
}

// d(coef * log p_target)/dz for a non-target column: -coef * p_v.
template <typename acc_t>
UNLX_HD acc_t logprob_grad_other(acc_t z, acc_t lse, acc_t coef) {
  return -coef * exp_acc(z - lse);
}

// The target column: coef * (1 - p_y) = -coef * expm1(log p_y), from the accurate
// log p_y of finish_row.
template <typename acc_t>
UNLX_HD acc_t logprob_grad_target(acc_t logp_target, acc_t coef) {
  return -coef * expm1_acc(logp_target);
}

// ---------------------------------------------------------------- policy + reference rows
// Rows z (policy) and r (frozen reference) of the same token. m_* are the row maxima,
// s_*_other the sum of exp(. - m_*) over the non-target columns, and cross the sum over all
// columns of exp(r_v - m_r) * ((r_v - m_r) - (z_v - m_z)).
template <typename acc_t>
struct RefRowStats {
  acc_t lse_z, lse_r, logp, logp_ref, kl;
};

template <typename acc_t>
UNLX_HD RefRowStats<acc_t> finish_ref_row(acc_t m_z, acc_t s_z_other, acc_t z_target, acc_t m_r, acc_t s_r_other,
                                          acc_t r_target, acc_t cross) {
  const RowStats<acc_t> pz = finish_row(SoftmaxPartial<acc_t>{m_z, s_z_other}, z_target);
  const RowStats<acc_t> pr = finish_row(SoftmaxPartial<acc_t>{m_r, s_r_other}, r_target);
  const acc_t e_z = exp_acc(z_target - m_z), e_r = exp_acc(r_target - m_r);
  const acc_t s_z_all = e_z + s_z_other, s_r_all = e_r + s_r_other;
  // KL(q || p) = sum_v q_v (r_v - z_v) + lse_z - lse_r, q = softmax(r), p = softmax(z), written
  // as cross / s_r + log(s_z / s_r). Both terms are of first order in the difference of the
  // two rows and KL is of second order, so each is kept free of larger quantities: the cross
  // term takes the maxima out of r - z (else it carries m_r - m_z, cancelled by lse_z - lse_r),
  // and log(s_z / s_r) near 1 is log1p of the difference of the sums, whose common target
  // terms (both 1 when the target is both rows' maximum) cancel exactly before any rounding
  // of a sum near 1.
  const acc_t ratio = s_z_all / s_r_all;
  const acc_t log_ratio = ratio > acc_t(0.5) && ratio < acc_t(2)
                              ? log1p_acc(((e_z - e_r) + (s_z_other - s_r_other)) / s_r_all)
                              : log_acc(ratio);
  return {pz.lse, pr.lse, pz.logp_target, pr.logp_target, cross / s_r_all + log_ratio};
}

// d/dz of a * log p_y + c * KL(q || p), for a non-target column: (c - a) p_v - c q_v.
template <typename acc_t>
UNLX_HD acc_t ref_grad_other(acc_t z, acc_t r, acc_t lse_z, acc_t lse_r, acc_t a, acc_t c) {
  return (c - a) * exp_acc(z - lse_z) - c * exp_acc(r - lse_r);
}

// The target column: a (1 - p_y) + c (p_y - q_y), with 1 - p_y = -expm1(log p_y).
template <typename acc_t>
UNLX_HD acc_t ref_grad_target(acc_t logp, acc_t logp_ref, acc_t a, acc_t c) {
  return -a * expm1_acc(logp) + c * (exp_acc(logp) - exp_acc(logp_ref));
}

// ---------------------------------------------------------------- DiPO rows
// q+ = softmax(r - shift 1_H), q- = softmax(r + shift 1_H), where H holds the entries of r
// at least as large as a per-row threshold (its k-th largest value). With e_v =
// exp(r_v - m_r): s_out / s_in sum e_v outside / inside H, and s+- = s_out + exp(-+shift) s_in.
// The direction g = q+ - q- is written without cancellation (s_out is summed directly,
// never as all - inside):
//   g_v = 2 sinh(shift) e_v s_in / (s+ s-)     outside H
//       = -2 sinh(shift) e_v s_out / (s+ s-)   inside H
// and for any y, <g, y> = 2 sinh(shift) (b_out s_in - b_in s_out) / (s+ s-), b_out / b_in
// summing e_v y_v outside / inside H. DiPO's Delta = <g, z - r> is linear in the policy logits
// z, so the driver never forms them: <g, z> = <g W, x> + <g, b>, and the row kernel needs only
// <g, r> (y = r - m_r: g sums to zero, so the shift by m_r changes nothing but the rounding).
template <typename acc_t>
UNLX_HD acc_t dipo_scale(acc_t s_out, acc_t s_in, acc_t shift) {
  const acc_t s_plus = s_out + exp_acc(-shift) * s_in, s_minus = s_out + exp_acc(shift) * s_in;
  return (expm1_acc(shift) - expm1_acc(-shift)) / (s_plus * s_minus);
}

// <g, y> from the sums b_out, b_in of e_v y_v outside / inside H.
template <typename acc_t>
UNLX_HD acc_t dipo_inner(acc_t s_out, acc_t s_in, acc_t b_out, acc_t b_in, acc_t shift) {
  return dipo_scale(s_out, s_in, shift) * (b_out * s_in - b_in * s_out);
}

// g_v, given scale = dipo_scale(...) of the row.
template <typename acc_t>
UNLX_HD acc_t dipo_direction(acc_t r, bool in_top, acc_t m_r, acc_t s_out, acc_t s_in, acc_t scale) {
  return scale * exp_acc(r - m_r) * (in_top ? -s_out : s_in);
}

}  // namespace unlearnx
