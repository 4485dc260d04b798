// The vectorised loops of the linear-alignment sampler's per-token strength
// (ratio "auto") and of its echo guard: how far apart the principled and the
// plain next-token distributions are (see linear_alignment_divergence.cpp).
#pragma once

#include <cstddef>

// log(sum_i exp(logits[i])): the normaliser of softmax at temperature 1.
// -inf when no logit is finite (every token masked).
double linear_alignment_logsumexp(const float * logits, size_t n);

// The Jensen-Shannon divergence, in bits (so in [0, 1]), between
// softmax(a) and softmax(b) at temperature 1, given their log-sum-exps:
//   JSD = 1/2 KL(p || m) + 1/2 KL(q || m),  m = (p + q) / 2.
// Tokens of -inf (masked) or NaN logits count as probability ~0.
double linear_alignment_jsd_bits(const float * a, double lse_a, const float * b, double lse_b, size_t n);
