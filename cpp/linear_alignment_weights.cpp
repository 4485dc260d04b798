// The hot loops of the linear-alignment nucleus: the best logit, softmax
// weights of every candidate at the mask temperature, and the mass above a
// threshold. Compiled on their own with fast math so that the compiler can
// vectorise the reductions and call a vectorised expf (glibc's libmvec): exp
// over the whole vocabulary is most of the sampler's cost.
//
// Logits may be -inf (masked by a grammar) or, from a caller, NaN, so the
// unit is built with -fno-finite-math-only (CMakeLists.txt): the compiler may
// not assume them away, and every loop below is written for them (-inf and
// NaN lose every comparison). glibc's vector expf is declared in
// linear_alignment_vector.h, since without finite-math-only glibc does not.
//
// Where the toolchain can (GCC on x86-64 with glibc: ifuncs), each loop is also built for
// AVX2 and AVX-512 and the best one is picked when the library loads, so a
// portable wheel still gets 8- or 16-wide expf instead of SSE's 4.
#include "linear_alignment_weights.h"
#include "linear_alignment_vector.h"

#include <algorithm>
#include <cmath>

// Each loop is written once, over an accessor of the i-th logit, and built
// for the candidate array (strided) and for a plain logits vector (dense).

// A max over 16 running lanes: an elementwise max the compiler turns into
// vector instructions, where one running max (a reduction whose NaNs it
// may not reorder without finite-math-only) stays one compare at a time.
constexpr size_t MAX_LANES = 16;

template <typename LogitAt>
static inline float max_logit(LogitAt logit_at, size_t n) {
    float lane[MAX_LANES];
    for (float & l : lane) {
        l = -INFINITY;
    }
    size_t i = 0;
    for (; i + MAX_LANES <= n; i += MAX_LANES) {
        for (size_t j = 0; j < MAX_LANES; ++j) {
            // NaN and -inf compare false: neither can win
            lane[j] = logit_at(i + j) > lane[j] ? logit_at(i + j) : lane[j];
        }
    }
    float best = -INFINITY;
    for (; i < n; ++i) {
        best = logit_at(i) > best ? logit_at(i) : best;
    }
    for (float l : lane) {
        best = l > best ? l : best;
    }
    return best;
}

template <typename LogitAt>
static inline double weights(LogitAt logit_at, size_t n, float max_logit, float inv_t, float * weight, float threshold,
                             double * mass) {
    double total = 0.0; // a float sum of 152k small weights drifts by ~1e-4
    double above = 0.0;
    for (size_t i = 0; i < n; ++i) {
        float z = (logit_at(i) - max_logit) * inv_t;
        z = z > -87.0f ? z : -87.0f; // -inf (masked) and underflow both give ~0
        weight[i] = expf(z);
        total += weight[i];
        above += weight[i] >= threshold ? (double) weight[i] : 0.0;
    }
    *mass = above;
    return total;
}

LINALIGN_VECTOR_CLONES
float linear_alignment_max_logit(const llama_token_data * data, size_t n) {
    return max_logit([data](size_t i) { return data[i].logit; }, n);
}

LINALIGN_VECTOR_CLONES
float linear_alignment_max_logit(const float * logits, size_t n) {
    return max_logit([logits](size_t i) { return logits[i]; }, n);
}

int32_t linear_alignment_argmax(const float * logits, size_t n) {
    const float best = linear_alignment_max_logit(logits, n);
    const float * at = std::isfinite(best) ? std::find(logits, logits + n, best) : std::max_element(logits, logits + n);
    return (int32_t) (at - logits);
}

LINALIGN_VECTOR_CLONES
double linear_alignment_weights(const llama_token_data * data, size_t n, float max_logit, float inv_t, float * weight,
                                float threshold, double * mass) {
    return weights([data](size_t i) { return data[i].logit; }, n, max_logit, inv_t, weight, threshold, mass);
}

LINALIGN_VECTOR_CLONES
double linear_alignment_weights(const float * logits, size_t n, float max_logit, float inv_t, float * weight,
                                float threshold, double * mass) {
    return weights([logits](size_t i) { return logits[i]; }, n, max_logit, inv_t, weight, threshold, mass);
}

LINALIGN_VECTOR_CLONES
double linear_alignment_mass_at_least(const float * weight, size_t n, float threshold) {
    double mass = 0.0;
    for (size_t i = 0; i < n; ++i) {
        mass += weight[i] >= threshold ? (double) weight[i] : 0.0;
    }
    return mass;
}

LINALIGN_VECTOR_CLONES
size_t linear_alignment_indices_at_least(const float * weight, size_t n, float threshold, int32_t * out) {
    // A nucleus is usually a handful of tokens among tens of thousands: test
    // 16 weights at a time (one vector compare) and look closer only at the
    // blocks that hold one.
    constexpr size_t block = 16;
    size_t m = 0;
    size_t i = 0;
    for (; i + block <= n; i += block) {
        float best = weight[i];
        for (size_t j = 1; j < block; ++j) {
            best = weight[i + j] > best ? weight[i + j] : best;
        }
        if (best >= threshold) {
            for (size_t j = 0; j < block; ++j) {
                out[m] = (int32_t) (i + j);
                m += weight[i + j] >= threshold;
            }
        }
    }
    for (; i < n; ++i) {
        out[m] = (int32_t) i;
        m += weight[i] >= threshold;
    }
    return m;
}
