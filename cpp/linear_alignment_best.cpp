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

LINALIGN_VECTOR_CLONES
int32_t linear_alignment_best_combined(const float * logits_p, const float * logits_b, float r, const float * weight,
                                       size_t n, float threshold) {
    const float keep = 1.0f + r;
    float best = -INFINITY;
    int32_t best_id = -1;
    size_t i = 0;
#if LINALIGN_HAVE_LANES
    // per lane, the best combined logit and the first id that has it: the
    // first id of the best over all lanes is then the lowest id among
    // equals, the token a walk in id order picks
    const lanes_f keep_v = lanes_splat(keep), r_v = lanes_splat(r), threshold_v = lanes_splat(threshold);
    lanes_f lane = lanes_splat(-INFINITY);
    lanes_i lane_id = lanes_splat(-1);
    lanes_i id = lanes_iota(0);
    const lanes_i id_step = lanes_splat((int32_t) LINALIGN_LANES);
    for (; i + LINALIGN_LANES <= n; i += LINALIGN_LANES, id += id_step) {
        const lanes_f v = keep_v * lanes_load(logits_p + i) - r_v * lanes_load(logits_b + i);
        // NaN loses every comparison, and -inf never beats -inf
        const lanes_i take = (lanes_load(weight + i) >= threshold_v) & (v > lane);
        lane = lanes_select(take, v, lane);
        lane_id = lanes_select(take, id, lane_id);
    }
    lanes_fold_best(lane, lane_id, &best, &best_id);
#endif
    for (; i < n; ++i) {
        const float v = keep * logits_p[i] - r * logits_b[i];
        if (weight[i] >= threshold && v > best) {
            best = v;
            best_id = (int32_t) i;
        }
    }
    return best_id;
}
