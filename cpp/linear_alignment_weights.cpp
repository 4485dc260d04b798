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
#include "linear_alignment_lanes.h"

#include <algorithm>
#include <cmath>

// Each loop is written once, over an accessor of the i-th logit, and built
// for the candidate array (strided) and for a plain logits vector (dense).

// A max over 16 running lanes, for the candidate array (strided) and where
// the vector types of linear_alignment_lanes.h are missing: 16 independent
// compare chains instead of one (a reduction whose NaNs the compiler may not
// reorder without finite-math-only). GCC 12 keeps it scalar; the dense
// vector's max below uses the vector types.
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

// The sum of the weights > above, in double per weight.
static inline double sum_above(const float * weight, size_t n, float above) {
#if LINALIGN_HAVE_LANES
    return lanes_sum_above(weight, n, above); // four chains, where one would wait on each add
#else
    double sum = 0.0;
    for (size_t i = 0; i < n; ++i) {
        sum += weight[i] > above ? (double) weight[i] : 0.0;
    }
    return sum;
#endif
}

// The masses at the guesses run in float within a block and in double
// across blocks: a float sum of 152k small weights drifts by ~1e-4, while a
// block's drifts by at most 256 roundings of its own mass (1.5e-5 of it);
// double sums (a conversion and an add per sum per weight) took twice as
// long as the exp. So does the total, for callers that test a mass against
// it with room for those roundings (greedy's pick). The exact cut sums it
// in double per weight too (sum_above, a block at a time, after its
// masses): its target decides between single tokens of a heavy tail
// (thousands of ~1e-6 each), and a small weight added to a float sum that
// holds the best token (weight 1) loses half its bits.
constexpr size_t SUM_BLOCK = 256;

template <typename LogitAt>
static inline double weights(LogitAt logit_at, size_t n, float max_logit, float inv_t, float * weight,
                             const volatile float * guesses, double mass[LINEAR_ALIGNMENT_N_GUESSES],
                             double * exact_total) {
    // One sum per guess, written out (a loop over them stays scalar), and
    // the guesses read from memory: GCC 12 vectorises none of these sums
    // when their thresholds are constants it can fold.
    static_assert(LINEAR_ALIGNMENT_N_GUESSES == 4, "one sum per guess");
    const float g0 = guesses[0], g1 = guesses[1], g2 = guesses[2], g3 = guesses[3];
    double m0 = 0.0, m1 = 0.0, m2 = 0.0, m3 = 0.0;
    // The exp in passes of their own: the vector expf is a call, which may
    // clobber every vector register, so sums carried across it are stored
    // and loaded again at every call. And its clamp in a pass before it
    // (linear_alignment_exp_arg).
    for (size_t i = 0; i < n; ++i) {
        weight[i] = linear_alignment_exp_arg((logit_at(i) - max_logit) * inv_t);
    }
    for (size_t i = 0; i < n; ++i) {
        weight[i] = expf(weight[i]);
    }
    double total = 0.0, exact = 0.0;
    for (size_t start = 0; start < n; start += SUM_BLOCK) {
        const size_t end = std::min(n, start + SUM_BLOCK);
        float b0 = 0.0f, b1 = 0.0f, b2 = 0.0f, b3 = 0.0f, all = 0.0f;
        for (size_t i = start; i < end; ++i) {
            b0 += weight[i] >= g0 ? weight[i] : 0.0f;
            b1 += weight[i] >= g1 ? weight[i] : 0.0f;
            b2 += weight[i] >= g2 ? weight[i] : 0.0f;
            b3 += weight[i] >= g3 ? weight[i] : 0.0f;
            all += weight[i];
        }
        m0 += b0;
        m1 += b1;
        m2 += b2;
        m3 += b3;
        total += all;
        if (exact_total != nullptr) {
            // every weight (none is NaN or -inf), in double, while the block is
            // in the nearest cache: a pass of its own read the vocabulary again
            exact += sum_above(weight + start, end - start, -INFINITY);
        }
    }
    mass[0] = m0;
    mass[1] = m1;
    mass[2] = m2;
    mass[3] = m3;
    if (exact_total != nullptr) {
        *exact_total = exact;
    }
    return total;
}

LINALIGN_VECTOR_CLONES
float linear_alignment_max_logit(const llama_token_data * data, size_t n) {
    return max_logit([data](size_t i) { return data[i].logit; }, n);
}

LINALIGN_VECTOR_CLONES
float linear_alignment_max_logit(const float * logits, size_t n) {
#if LINALIGN_HAVE_LANES
    // as vector types, in four chains (linear_alignment_lanes.h): the array of lanes above stays scalar here
    return lanes_max(n, [logits](size_t i) { return lanes_load(logits + i); }, [logits](size_t i) { return logits[i]; });
#else
    return max_logit([logits](size_t i) { return logits[i]; }, n);
#endif
}

LINALIGN_VECTOR_CLONES
int32_t linear_alignment_argmax(const float * logits, size_t n) {
    float best = -INFINITY;
    int32_t best_id = -1;
#if LINALIGN_HAVE_LANES
    // the max, then the first id that has it: passes at the vector units'
    // pace, where one that carries each lane's id is a chain
    const auto lanes_at = [logits](size_t i) { return lanes_load(logits + i); };
    const auto value_at = [logits](size_t i) { return logits[i]; };
    best_id = lanes_argmax(n, lanes_at, value_at, &best);
#else
    for (size_t i = 0; i < n; ++i) {
        if (logits[i] > best) {
            best = logits[i];
            best_id = (int32_t) i;
        }
    }
#endif
    if (best_id < 0 || !std::isfinite(best)) {
        // no finite logit beats -inf: std::max_element's answer, as before
        return (int32_t) (std::max_element(logits, logits + n) - logits);
    }
    return best_id;
}

LINALIGN_VECTOR_CLONES
double linear_alignment_weights(const llama_token_data * data, size_t n, float max_logit, float inv_t, float * weight,
                                double mass[LINEAR_ALIGNMENT_N_GUESSES], double * exact_total) {
    return weights([data](size_t i) { return data[i].logit; }, n, max_logit, inv_t, weight, LINEAR_ALIGNMENT_GUESSES,
                   mass, exact_total);
}

LINALIGN_VECTOR_CLONES
double linear_alignment_weights(const float * logits, size_t n, float max_logit, float inv_t, float * weight,
                                double mass[LINEAR_ALIGNMENT_N_GUESSES], double * exact_total) {
    return weights([logits](size_t i) { return logits[i]; }, n, max_logit, inv_t, weight, LINEAR_ALIGNMENT_GUESSES,
                   mass, exact_total);
}

LINALIGN_VECTOR_CLONES
double linear_alignment_mass_above(const float * weight, size_t n, float w) {
    // in double per weight, as the exact total it is compared with (see weights above)
    return sum_above(weight, n, w);
}

LINALIGN_VECTOR_CLONES
double linear_alignment_mass_above_estimate(const float * weight, size_t n, float w) {
    double mass = 0.0;
    for (size_t start = 0; start < n; start += SUM_BLOCK) {
        const size_t end = std::min(n, start + SUM_BLOCK);
        float block = 0.0f;
        for (size_t i = start; i < end; ++i) {
            block += weight[i] > w ? weight[i] : 0.0f;
        }
        mass += block;
    }
    return mass;
}

LINALIGN_VECTOR_CLONES
size_t linear_alignment_indices_at_least(const float * weight, size_t n, float threshold, int32_t * out) {
    // A nucleus is usually a handful of tokens among tens of thousands: test
    // a round of 32 weights at a time (four vector compares, one test) and
    // look closer only at the rounds that hold one.
    size_t m = 0;
    size_t i = 0;
#if LINALIGN_HAVE_LANES
    const lanes_f t = lanes_splat(threshold);
    for (; i + LINALIGN_ROUND <= n; i += LINALIGN_ROUND) {
        if (lanes_round_any(i, [&](size_t j) { return lanes_load(weight + j) >= t; })) {
            for (size_t j = 0; j < LINALIGN_ROUND; ++j) {
                out[m] = (int32_t) (i + j);
                m += weight[i + j] >= threshold;
            }
        }
    }
#else
    constexpr size_t block = 16;
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
#endif
    for (; i < n; ++i) {
        out[m] = (int32_t) i;
        m += weight[i] >= threshold;
    }
    return m;
}

// exp's float from z's bits (linear_alignment_weights.h): 2^23 / ln 2 (a
// float integer) scales z to the exponent field, 127 << 23 is its bias. The
// conversion truncates toward zero: at most one unit up, 1.2e-7.
constexpr float APPROX_EXP_SCALE = 12102203.0f;
constexpr int32_t APPROX_EXP_BIAS = 127 << 23;

static inline float approx_exp(float z) {
    const int32_t bits = (int32_t) (linear_alignment_exp_arg(z) * APPROX_EXP_SCALE) + APPROX_EXP_BIAS;
    return __builtin_bit_cast(float, bits);
}

float linear_alignment_approx_exp(float z) {
    return approx_exp(z);
}

LINALIGN_VECTOR_CLONES
void linear_alignment_approx_masses(const float * logits, size_t n, float max_logit, float inv_t, float logit_min,
                                    double * all, double * at_least) {
    // in float blocks and double across them, as the masses (the sums'
    // roundings: within 1.5e-5), z as the weights compute it
    double sum_all = 0.0, sum_at_least = 0.0;
    for (size_t start = 0; start < n; start += SUM_BLOCK) {
        const size_t end = std::min(n, start + SUM_BLOCK);
        float block_all = 0.0f, block_at_least = 0.0f;
        for (size_t i = start; i < end; ++i) {
            const float e = approx_exp((logits[i] - max_logit) * inv_t);
            block_all += e;
            block_at_least += logits[i] >= logit_min ? e : 0.0f; // NaN: not at least
        }
        sum_all += block_all;
        sum_at_least += block_at_least;
    }
    *all = sum_all;
    *at_least = sum_at_least;
}
