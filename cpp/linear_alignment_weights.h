// The vectorised loops of the linear-alignment nucleus (see linear_alignment_weights.cpp).
#pragma once

#include "llama.h"

#include <cstddef>

// Each takes the logits as a candidate array or as a plain vector.

// The largest logit (-inf if none is finite or larger).
float linear_alignment_max_logit(const llama_token_data * data, size_t n);
float linear_alignment_max_logit(const float * logits, size_t n);

// The first index of the largest logit (numpy's argmax for finite values):
// the vectorised max, then where it first is. std::max_element's chain of
// dependent compare-and-moves costs several times as much over a vocabulary.
// Without a finite logit, std::max_element's answer.
int32_t linear_alignment_argmax(const float * logits, size_t n);

// weight[i] = exp((logit_i - max_logit) * inv_t); returns their sum, and in
// *mass the sum of those >= threshold (the first nucleus guess, in the same pass).
// Logits of -inf get a weight of about 1e-38.
double linear_alignment_weights(const llama_token_data * data, size_t n, float max_logit, float inv_t, float * weight,
                                float threshold, double * mass);
double linear_alignment_weights(const float * logits, size_t n, float max_logit, float inv_t, float * weight,
                                float threshold, double * mass);

// Sum of the weights that are >= threshold.
double linear_alignment_mass_at_least(const float * weight, size_t n, float threshold);

// Writes the indices of the weights >= threshold to out (room for n); returns
// how many. Blocks with none are skipped by a vectorised test.
size_t linear_alignment_indices_at_least(const float * weight, size_t n, float threshold, int32_t * out);
