// Softmax weights of a candidate array (see linear_alignment_weights.cpp).
#pragma once

#include "llama.h"

#include <cstddef>

// weight[i] = exp((logit_i - max_logit) * inv_t); returns their sum.
// Candidates with logit -inf get a weight of about 1e-38.
float linear_alignment_weights(const llama_token_data * data, size_t n, float max_logit, float inv_t, float * weight);
