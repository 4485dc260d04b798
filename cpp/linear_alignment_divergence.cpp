// The per-token strength of ratio "auto" (docs/auto_ratio.md) and the echo
// guard's normalisers: both need full-vocabulary softmaxes of two streams at
// temperature 1. Built, like linear_alignment_weights.cpp, with fast math
// (and -fno-finite-math-only), and outside link-time optimisation
// (CMakeLists.txt), so that the compiler vectorises the reductions and calls
// glibc's vector expf and logf; -inf and NaN logits lose every comparison
// below and count as probability ~0.
#include "linear_alignment_divergence.h"
#include "linear_alignment_weights.h"
#include "linear_alignment_vector.h"

#include <algorithm>
#include <cmath>

// Each loop clamps a block of log-probabilities into a buffer before the
// exp (linear_alignment_exp_arg: the clamp must not share the exp's loop).
constexpr size_t CLAMP_BLOCK = 256;

LINALIGN_VECTOR_CLONES
static double sum_exp(const float * logits, size_t n, float max_logit) {
    double total = 0.0;
    float z[CLAMP_BLOCK];
    for (size_t start = 0; start < n; start += CLAMP_BLOCK) {
        const size_t m = std::min(CLAMP_BLOCK, n - start);
        for (size_t i = 0; i < m; ++i) {
            z[i] = linear_alignment_exp_arg(logits[start + i] - max_logit);
        }
        for (size_t i = 0; i < m; ++i) {
            total += expf(z[i]);
        }
    }
    return total;
}

double linear_alignment_logsumexp(const float * logits, size_t n) {
    const float max_logit = linear_alignment_max_logit(logits, n);
    if (!std::isfinite(max_logit)) {
        return -INFINITY;
    }
    return (double) max_logit + std::log(sum_exp(logits, n, max_logit));
}

LINALIGN_VECTOR_CLONES
static double jsd_nats_twice(const float * a, float lse_a, const float * b, float lse_b, size_t n) {
    double acc = 0.0;
    float la[CLAMP_BLOCK], lb[CLAMP_BLOCK];
    for (size_t start = 0; start < n; start += CLAMP_BLOCK) {
        const size_t m = std::min(CLAMP_BLOCK, n - start);
        for (size_t i = 0; i < m; ++i) {
            la[i] = linear_alignment_exp_arg(a[start + i] - lse_a);
            lb[i] = linear_alignment_exp_arg(b[start + i] - lse_b);
        }
        for (size_t i = 0; i < m; ++i) {
            const float pa = expf(la[i]);
            const float pb = expf(lb[i]);
            const float m_ab = 0.5f * (pa + pb);
            const float lm = logf(m_ab > 1e-37f ? m_ab : 1e-37f);
            acc += (double) (pa * (la[i] - lm) + pb * (lb[i] - lm));
        }
    }
    return acc;
}

double linear_alignment_jsd_bits(const float * a, double lse_a, const float * b, double lse_b, size_t n) {
    if (!std::isfinite(lse_a) || !std::isfinite(lse_b)) {
        return 0.0;  // a stream with nothing plausible: no divergence to act on
    }
    const double jsd = 0.5 * jsd_nats_twice(a, (float) lse_a, b, (float) lse_b, n) / std::log(2.0);
    return jsd < 0.0 ? 0.0 : jsd > 1.0 ? 1.0 : jsd;
}
