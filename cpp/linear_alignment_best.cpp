// Greedy decoding's scan of the combine over the vocabulary: the best
// combined logit among the tokens a nucleus can hold, for
// linear_alignment_nucleus_best (linear_alignment_sampler.cpp).
//
// A dense pass, not a walk over a list of candidate indices: on a flat
// distribution the candidates are thousands of tokens scattered over the
// vocabulary, and gathering their logits costs more than reading every
// row in order, 8 lanes at a time (linear_alignment_lanes.h).
//
// No fast math here, and no fused multiply-adds (CMakeLists.txt): each
// combined logit must be the one the exact cut computes, to the bit, or the
// two paths could pick different tokens of nearly equal logits.
#include "linear_alignment_weights.h"
#include "linear_alignment_lanes.h"
#include "linear_alignment_vector.h"

#include <cmath>

// The first index of the largest finite combined logit among the tokens
// admit admits: admit(i) for one token, admit_lanes(i) the mask of the 8
// from i. Inlined into each vector clone below, whose instructions it must
// be built with: called across clones, its vectors would also cross ABIs.
template <typename Admit, typename AdmitLanes>
LINALIGN_ALWAYS_INLINE static inline int32_t best_combined(const float * logits_p, const float * logits_b, float r, size_t n, Admit admit,
                                    AdmitLanes admit_lanes) {
    const float keep = 1.0f + r;
    // a token's combined logit, -inf where it cannot be in the nucleus
    const auto value_at = [=](size_t i) {
        return admit(i) ? keep * logits_p[i] - r * logits_b[i] : -INFINITY;
    };
    float best = -INFINITY;
#if LINALIGN_HAVE_LANES
    // the best, then the first id that has it (the token a walk in id order
    // picks), in the first segment that holds it: passes at the vector units'
    // pace (lanes_argmax), each computing a combined logit as the other does,
    // to the bit
    const lanes_f keep_v = lanes_splat(keep), r_v = lanes_splat(r);
    const lanes_f none = lanes_splat(-INFINITY);
    const auto lanes_at = [=](size_t i) {
        const lanes_f v = keep_v * lanes_load(logits_p + i) - r_v * lanes_load(logits_b + i);
        return lanes_select(admit_lanes(i), v, none);
    };
    // NaN loses every comparison, and -inf never beats -inf
    return lanes_argmax(n, lanes_at, value_at, &best);
#else
    (void) admit_lanes;
    int32_t best_id = -1;
    for (size_t i = 0; i < n; ++i) {
        const float v = value_at(i);
        if (v > best) {
            best = v;
            best_id = (int32_t) i;
        }
    }
    return best_id;
#endif
}

LINALIGN_VECTOR_CLONES
int32_t linear_alignment_best_combined(const float * logits_p, const float * logits_b, float r, const float * weight,
                                       size_t n, float threshold) {
#if LINALIGN_HAVE_LANES
    const lanes_i every = lanes_splat(0.0f) == lanes_splat(0.0f);
    const lanes_f threshold_v = lanes_splat(threshold);
    const auto every_lanes = [=](size_t) { return every; };
    const auto weight_lanes = [=](size_t i) { return lanes_load(weight + i) >= threshold_v; };
#else
    const auto every_lanes = [](size_t) { return 0; };
    const auto weight_lanes = every_lanes;
#endif
    if (weight == nullptr) {
        return best_combined(logits_p, logits_b, r, n, [](size_t) { return true; }, every_lanes);
    }
    return best_combined(logits_p, logits_b, r, n, [=](size_t i) { return weight[i] >= threshold; }, weight_lanes);
}
