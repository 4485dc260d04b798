// The hot loop of the linear-alignment nucleus: softmax weights of every
// candidate at the mask temperature. Compiled on its own with fast math so
// that the compiler can call a vectorised expf (glibc's libmvec): exp over
// the whole vocabulary is most of the sampler's cost. Inputs are made finite
// first, since fast math assumes no infinities.
#include "linear_alignment_weights.h"

#include <cmath>

float linear_alignment_weights(const llama_token_data * data, size_t n, float max_logit, float inv_t, float * weight) {
    float total = 0.0f;
    for (size_t i = 0; i < n; ++i) {
        float z = (data[i].logit - max_logit) * inv_t;
        z = z > -87.0f ? z : -87.0f; // -inf (masked) and underflow both give ~0
        weight[i] = expf(z);
        total += weight[i];
    }
    return total;
}
