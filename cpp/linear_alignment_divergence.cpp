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

#include <cmath>

// a log-probability clamped where expf underflows: -inf and NaN land here too
static inline float clamp_log(float z) { return z > -87.0f ? z : -87.0f; }

LINALIGN_VECTOR_CLONES
static double sum_exp(const float * logits, size_t n, float max_logit) {
    double total = 0.0;
    for (size_t i = 0; i < n; ++i) {
        total += expf(clamp_log(logits[i] - max_logit));
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
    for (size_t i = 0; i < n; ++i) {
        const float la = clamp_log(a[i] - lse_a);
        const float lb = clamp_log(b[i] - lse_b);
        const float pa = expf(la);
        const float pb = expf(lb);
        const float m  = 0.5f * (pa + pb);
        const float lm = logf(m > 1e-37f ? m : 1e-37f);
        acc += (double) (pa * (la - lm) + pb * (lb - lm));
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
