// The vectorised loops of the linear-alignment nucleus (see linear_alignment_weights.cpp).
#pragma once

#include "llama.h"

#include <cstddef>

// Each takes the logits as a candidate array or as a plain vector.

// The largest logit (-inf if none is finite or larger).
float linear_alignment_max_logit(const llama_token_data * data, size_t n);
float linear_alignment_max_logit(const float * logits, size_t n);

// The first index of the largest logit (numpy's argmax for finite values),
// as the max and then a search for it, two vector passes
// (linear_alignment_lanes.h). std::max_element's chain of dependent
// compare-and-moves costs several times as much over a vocabulary. Without
// a finite logit, std::max_element's answer.
int32_t linear_alignment_argmax(const float * logits, size_t n);

// The weights the nucleus's candidates may reach down to, tried in turn, as
// fractions of the best token's weight: e^-2, e^-4, e^-8, e^-16 (each the
// square of the last, in float). Below 1e-13 a token cannot matter
// (linear_alignment_threshold in linear_alignment_sampler.cpp).
constexpr size_t LINEAR_ALIGNMENT_N_GUESSES = 4;
constexpr double LINEAR_ALIGNMENT_MASS_SLACK = 1e-4; // > two sums' 256 float roundings (2 x 1.5e-5)
constexpr float LINEAR_ALIGNMENT_GUESS_0 = 0.1353352832f; // e^-2
constexpr float LINEAR_ALIGNMENT_GUESSES[LINEAR_ALIGNMENT_N_GUESSES] = {
    LINEAR_ALIGNMENT_GUESS_0, LINEAR_ALIGNMENT_GUESS_0 * LINEAR_ALIGNMENT_GUESS_0,
    (LINEAR_ALIGNMENT_GUESS_0 * LINEAR_ALIGNMENT_GUESS_0) * (LINEAR_ALIGNMENT_GUESS_0 * LINEAR_ALIGNMENT_GUESS_0),
    ((LINEAR_ALIGNMENT_GUESS_0 * LINEAR_ALIGNMENT_GUESS_0) * (LINEAR_ALIGNMENT_GUESS_0 * LINEAR_ALIGNMENT_GUESS_0)) *
        ((LINEAR_ALIGNMENT_GUESS_0 * LINEAR_ALIGNMENT_GUESS_0) * (LINEAR_ALIGNMENT_GUESS_0 * LINEAR_ALIGNMENT_GUESS_0))};

// weight[i] = exp((logit_i - max_logit) * inv_t); returns their sum, in
// mass[k] the sum of those >= LINEAR_ALIGNMENT_GUESSES[k], and, unless
// exact_total is null, their sum in double per weight there. The returned
// sum and the masses are summed in float blocks: each is within
// LINEAR_ALIGNMENT_MASS_SLACK of the exact sum, relative to the total, so a
// caller that needs a mass to hold a target asks for that much more.
// Logits of -inf get a weight of about 1e-38.
double linear_alignment_weights(const llama_token_data * data, size_t n, float max_logit, float inv_t, float * weight,
                                double mass[LINEAR_ALIGNMENT_N_GUESSES], double * exact_total);
double linear_alignment_weights(const float * logits, size_t n, float max_logit, float inv_t, float * weight,
                                double mass[LINEAR_ALIGNMENT_N_GUESSES], double * exact_total);

// Sum of the weights that are > w, in double per weight.
double linear_alignment_mass_above(const float * weight, size_t n, float w);

// The same sum in float blocks, as the masses: within
// LINEAR_ALIGNMENT_MASS_SLACK of it, relative to the total, at a third of
// the cost (no conversion to double per weight).
double linear_alignment_mass_above_estimate(const float * weight, size_t n, float w);

// Writes the indices of the weights >= threshold to out (room for n); returns
// how many. Blocks with none are skipped by a vectorised test.
size_t linear_alignment_indices_at_least(const float * weight, size_t n, float threshold, int32_t * out);

// Greedy over the combine l = (1 + r) l_p - r l_0 among the tokens of weight
// >= threshold (every token when weight is null): the first index of the
// largest finite combined logit, or -1 if there is none. Built without fused
// multiply-adds (CMakeLists.txt), so a combined logit here is the one the
// exact cut computes (linear_alignment_combine in linear_alignment_sampler.cpp).
int32_t linear_alignment_best_combined(const float * logits_p, const float * logits_b, float r, const float * weight,
                                       size_t n, float threshold);

// exp(z) for z <= 0 in a few instructions (Schraudolph's): the float whose
// bits are z log2(e) 2^23 plus the exponent's bias, a line between the powers
// of two around exp(z), clamped at -87 as the weights are (NaN and -inf
// too). Over [-87, 0] the line lies up to 6.2% above exp(z):
//   approx LINEAR_ALIGNMENT_APPROX_LOW <= exp(z) <= approx LINEAR_ALIGNMENT_APPROX_HIGH,
// with 1.0615 for the line's most, (1 + f) / 2^f <= 1.06148, and 1e-4 for
// the rounding of z's product (5.3e-6), of the sums below (1.5e-5) and of z
// itself, which fast math may compute in another order than the weights do
// (a few roundings of the logits: 2.4e-5 for logits up to 100).
constexpr double LINEAR_ALIGNMENT_APPROX_LOW  = (1.0 - 1e-4) / 1.0615;
constexpr double LINEAR_ALIGNMENT_APPROX_HIGH = 1.0 + 1e-4;
float linear_alignment_approx_exp(float z);

// Greedy's quick bounds, with no exact exp: the sums of
// linear_alignment_approx_exp((logit_i - max_logit) * inv_t) over every token
// (*all) and over the tokens of logit >= logit_min (*at_least), in float
// blocks as the masses (within 1.5e-5 of the exact sums of those values).
void linear_alignment_approx_masses(const float * logits, size_t n, float max_logit, float inv_t, float logit_min,
                                    double * all, double * at_least);
