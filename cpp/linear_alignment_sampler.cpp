// linear-alignment sampler, written in the form of llama.cpp's own samplers
// (src/llama-sampler.cpp): a context struct with const parameters and reused
// scratch, static interface functions, one llama_sampler_i table, a factory.
#include "linear_alignment_sampler.h"
#include "linear_alignment_weights.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

// linear-alignment

struct llama_sampler_linear_alignment {
    const float   ratio;
    const float   top_p;
    const float   temperature;
    const int32_t n_vocab;

    const float * logits_base = nullptr;

    // composed principles: the ratios of the principled streams after P, and
    // their logits for the next apply (empty: one principle)
    const std::vector<float>   extra_ratios;
    std::vector<const float *> logits_extra;

    // per token: each stream's step size and the echo guard (P first)
    linear_alignment_steering steer;

    // scratch reused across calls
    std::vector<int32_t>          order;  // candidate indices by decreasing logit
    std::vector<double>           bin_mass; // a wide nucleus's mass by log-weight
    std::vector<float>            weight; // unnormalised probabilities at the mask temperature
    std::vector<llama_token_data> kept;  // the nucleus, before it is copied back
    std::vector<float>            masked; // an extra stream's logits over the candidates
    std::vector<uint8_t>          in_union; // candidate index -> in the union of the nuclei
    std::vector<int32_t>          union_idx; // that union, in the order it was found
    std::vector<std::vector<float>> guarded_rows; // streams' logits without the echo guard's drops

    // threads greedy's scans may take (llama_sampler_linear_alignment_set_threads)
    int32_t n_threads = 1;
};

static const char * llama_sampler_linear_alignment_name(const struct llama_sampler * /*smpl*/) {
    return "linear-alignment";
}

// The sampler reads stream P's logits either from a candidate array (as a
// llama_sampler) or from the plain logits vector (the dense entry point).
static inline float logit_of(const llama_token_data * data, size_t i) { return data[i].logit; }
static inline float logit_of(const float * logits, size_t i) { return logits[i]; }

// The nucleus when the first `head` candidates by logit (sorted, summing to
// `cum`) fall short of `target`: a flat distribution, thousands of tokens.
// Rather than sort every candidate, the rest are binned by log-weight; the
// bin where the mass reaches the target is found, the bins above it are
// wholly in, and only that bin is sorted to find where the nucleus ends
// inside it. The nucleus is then the sorted head, the wholly-in tokens in no
// particular order, and the crossing bin's part in decreasing order. Returns
// its size, or 0 if the candidates' mass falls short of the target.
template <typename Logits>
[[gnu::noinline]] static size_t linear_alignment_wide_nucleus(llama_sampler_linear_alignment * ctx, const Logits * src,
                                                             size_t m, size_t head, double cum, double target,
                                                             float max_logit, float inv_t, float threshold) {
    auto & order = ctx->order;
    const auto & weight = ctx->weight;
    const auto by_logit = [src](int32_t a, int32_t b) { return logit_of(src, a) > logit_of(src, b); };
    const size_t n_bins = ctx->bin_mass.size();
    const float z_top   = (logit_of(src, order[head - 1]) - max_logit) * inv_t;
    const float z_floor = std::log(threshold);
    const float scale   = (float) n_bins / std::max(z_top - z_floor, 1e-6f);
    const auto bin_of = [&](int32_t i) {
        const float x = (z_top - (logit_of(src, i) - max_logit) * inv_t) * scale;
        return (size_t) std::min<float>(std::max(x, 0.0f), (float) (n_bins - 1));
    };
    std::fill(ctx->bin_mass.begin(), ctx->bin_mass.end(), 0.0);
    for (size_t i = head; i < m; ++i) {
        ctx->bin_mass[bin_of(order[i])] += weight[order[i]];
    }
    size_t crossing = n_bins - 1;
    double binned = cum;
    for (size_t b = 0; b < n_bins; ++b) {
        if (binned + ctx->bin_mass[b] >= target) {
            crossing = b;
            break;
        }
        binned += ctx->bin_mass[b];
    }
    // the bins above the crossing one are wholly in: they need no order
    const auto wholly_in = std::partition(order.begin() + head, order.begin() + m,
                                          [&](int32_t i) { return bin_of(i) < crossing; });
    const auto crossing_end = std::partition(wholly_in, order.begin() + m,
                                             [&](int32_t i) { return bin_of(i) == crossing; });
    std::sort(wholly_in, crossing_end, by_logit);
    cum = binned;
    for (size_t i = wholly_in - order.begin(); i < m; ++i) {
        if (order.begin() + i == crossing_end) {
            // rounding left the sum short of the target: sort what is left
            std::sort(crossing_end, order.begin() + m, by_logit);
        }
        cum += weight[order[i]];
        if (cum >= target) {
            return i + 1;
        }
    }
    return 0;
}

// The vocabulary in two fixed parts, split at a multiple of 256 (the mass
// sums' blocks). Every sum over it is the first part's sum plus the second's,
// so it is the same to the bit whether one thread computes both or two
// threads one each (greedy's scans on the decode's idle OpenMP team:
// llama_sampler_linear_alignment_set_threads).
constexpr int LINEAR_ALIGNMENT_N_PARTS = 2;

struct vocab_part {
    size_t begin;
    size_t n;
};

static inline vocab_part linear_alignment_part(size_t n, int k) {
    const size_t half = n / 2 / 256 * 256;
    return k == 0 ? vocab_part{0, half} : vocab_part{half, n - half};
}

// The least vocabulary whose pass pays for two threads: a fork and a join
// of the team cost about 2 µs on a 2-core machine, while a light scan (a
// max, the combine, the bounds, a mass above: a few vector instructions a
// value) takes 1.4-3.3 µs at 49k, and the weights (an exp a value) 19.
constexpr size_t LINEAR_ALIGNMENT_SPLIT_LIGHT = 65536;
constexpr size_t LINEAR_ALIGNMENT_SPLIT_EXP   = 16384;

// f(k) for each part k of a vocabulary of n: on two threads of the calling
// thread's OpenMP team when n_threads > 1 and n >= split (f must not
// throw), else in turn.
template <typename F>
static void linear_alignment_for_parts(int32_t n_threads, size_t n, size_t split, F f) {
#ifdef LINALIGN_OPENMP
    if (n_threads > 1 && n >= split) {
#    pragma omp parallel for num_threads(LINEAR_ALIGNMENT_N_PARTS) schedule(static, 1)
        for (int k = 0; k < LINEAR_ALIGNMENT_N_PARTS; ++k) {
            f(k);
        }
        return;
    }
#else
    (void) n_threads;
    (void) n;
    (void) split;
#endif
    for (int k = 0; k < LINEAR_ALIGNMENT_N_PARTS; ++k) {
        f(k);
    }
}

// The weight a nucleus's candidates reach down to, with every token's
// softmax weight at the mask temperature in ctx->weight and their total in
// *total: summed in double per weight when exact (the exact cut's), else as
// the masses are, within LINEAR_ALIGNMENT_MASS_SLACK of it (greedy's).
// Sorting the whole vocabulary would cost most of the step, while a
// nucleus is usually a handful of tokens. The nucleus is a prefix of the
// candidates by decreasing weight, so once the tokens of weight >= w hold
// top_p of the mass it lies among them: try w = e^-2, e^-4, ... of the
// best token's weight (LINEAR_ALIGNMENT_GUESSES, whose masses come with the
// weights). Below 1e-13 a token changes the total by less than float
// rounding, even over a 152k vocabulary, and cannot be in a nucleus of
// top_p < 1 unless nothing else is: when no w holds the target, the
// candidates are those of weight >= floor.
template <typename Logits>
static float linear_alignment_threshold(llama_sampler_linear_alignment * ctx, const Logits * src, size_t n,
                                        float max_logit, float inv_t, float floor, bool exact, double * total) {
    auto & weight = ctx->weight;
    weight.resize(n);
    double part_mass[LINEAR_ALIGNMENT_N_PARTS][LINEAR_ALIGNMENT_N_GUESSES];
    double part_total[LINEAR_ALIGNMENT_N_PARTS], part_exact[LINEAR_ALIGNMENT_N_PARTS] = {};
    linear_alignment_for_parts(ctx->n_threads, n, LINEAR_ALIGNMENT_SPLIT_EXP, [&](int k) {
        const vocab_part p = linear_alignment_part(n, k);
        part_total[k] = linear_alignment_weights(src + p.begin, p.n, max_logit, inv_t, weight.data() + p.begin,
                                                 part_mass[k], exact ? &part_exact[k] : nullptr);
    });
    double mass[LINEAR_ALIGNMENT_N_GUESSES];
    for (size_t g = 0; g < LINEAR_ALIGNMENT_N_GUESSES; ++g) {
        mass[g] = part_mass[0][g] + part_mass[1][g];
    }
    *total = exact ? part_exact[0] + part_exact[1] : part_total[0] + part_total[1];
    // a guess must hold the target beyond the masses' and the total's
    // roundings: a candidate set that falls short of it by a rounding would
    // cut the nucleus early
    const double enough = ctx->top_p * *total + LINEAR_ALIGNMENT_MASS_SLACK * *total;
    for (size_t k = 0; k < LINEAR_ALIGNMENT_N_GUESSES; ++k) {
        if (mass[k] >= enough) {
            return LINEAR_ALIGNMENT_GUESSES[k];
        }
    }
    return floor;
}

// The candidates a nucleus can lie among (linear_alignment_threshold), at
// the front of ctx->order; their count is returned, and the weight they
// reach down to in *threshold.
template <typename Logits>
static size_t linear_alignment_candidates(llama_sampler_linear_alignment * ctx, const Logits * src, size_t n,
                                          float max_logit, float inv_t, float floor, double * target,
                                          float * threshold) {
    double total = 0.0;
    *threshold = linear_alignment_threshold(ctx, src, n, max_logit, inv_t, floor, true, &total);
    *target = ctx->top_p * total;
    ctx->order.resize(n); // room for every index; only the first m are used
    return linear_alignment_indices_at_least(ctx->weight.data(), n, *threshold, ctx->order.data());
}

// Size of the nucleus: the smallest set of candidates, taken by decreasing
// logit, whose probability mass reaches top_p; it is left at the front of
// ctx->order. The first token is always kept.
template <typename Logits>
static size_t linear_alignment_nucleus(llama_sampler_linear_alignment * ctx, const Logits * src, size_t n) {
    const float max_logit = linear_alignment_max_logit(src, n);
    if (!std::isfinite(max_logit)) {
        return n; // nothing is plausible (e.g. a grammar masked all): leave the set alone
    }

    const float inv_t = ctx->temperature > 0.0f ? 1.0f / ctx->temperature : 1.0f;
    double target = 0.0;
    float threshold = 0.0f;
    const size_t m = linear_alignment_candidates(ctx, src, n, max_logit, inv_t, 1e-13f, &target, &threshold);
    auto & order  = ctx->order;
    const auto & weight = ctx->weight;
    const auto by_logit = [src](int32_t a, int32_t b) { return logit_of(src, a) > logit_of(src, b); };

    // Nuclei are usually a handful of tokens: sort a small head first.
    const size_t head = std::min<size_t>(m, 64);
    std::partial_sort(order.begin(), order.begin() + head, order.begin() + m, by_logit);
    double cum = 0.0;
    for (size_t i = 0; i < head; ++i) {
        cum += weight[order[i]];
        if (cum >= target) {
            return i + 1;
        }
    }
    if (head < m) {
        const size_t k = linear_alignment_wide_nucleus(ctx, src, m, head, cum, target, max_logit, inv_t, threshold);
        if (k > 0) {
            return k;
        }
    }
    // the candidates' mass fell short of the target by rounding (it reached
    // it in float), or below 1e-13 is needed after all: keep them, or all
    return threshold > 1e-13f ? m : n;
}

// One token's combined logit, l = (1 + r) l_p - r l_0, rounded as every
// path computes it (the exact cut, greedy's pick; the module has no fused
// multiply-adds), so that the paths agree to the bit.
static inline float linear_alignment_combined(float lp, float l0, float r) {
    return (1.0f + r) * lp - r * l0;
}

// Step 3 over the nucleus: l = (1 + r) l_p - r l_0.
static void linear_alignment_combine(const llama_sampler_linear_alignment * ctx, llama_token_data * data, size_t n) {
    const float * l0 = ctx->logits_base;
    const float r = ctx->steer.applied[0];
    if (l0 == nullptr || r == 0.0f) {
        return;
    }
    for (size_t i = 0; i < n; ++i) {
        llama_token_data & td = data[i];
        // -inf stays -inf: (1 + r) * -inf would flip sign for r < -1
        if (td.id < 0 || td.id >= ctx->n_vocab || !std::isfinite(td.logit)) {
            continue;
        }
        td.logit = linear_alignment_combined(td.logit, l0[td.id], r);
    }
}

// Several principles: the union of the principled streams' nuclei.
// src_k(i) is stream k's logit at candidate index i. Adds stream k's nucleus
// to ctx->union_idx (the whole set when top_p is 1 or nothing is plausible).
template <typename Logits>
static void linear_alignment_union_add(llama_sampler_linear_alignment * ctx, const Logits * src, size_t n) {
    const size_t k = ctx->top_p >= 1.0f ? n : linear_alignment_nucleus(ctx, src, n);
    for (size_t j = 0; j < k; ++j) {
        const int32_t i = k == n ? (int32_t) j : ctx->order[j];
        if (!ctx->in_union[i]) {
            ctx->in_union[i] = 1;
            ctx->union_idx.push_back(i);
        }
    }
}

// Step 3 for several principles over the kept candidates:
// l = l_0 + sum_i (1 + r_i) (l_i - l_0), with l_1 the candidate's own logit.
static void linear_alignment_combine_composed(const llama_sampler_linear_alignment * ctx, llama_token_data * data,
                                              size_t n) {
    const float * l0 = ctx->logits_base;
    if (l0 == nullptr) {
        return;  // no base stream: masking only, as with one principle
    }
    const size_t n_extra = ctx->extra_ratios.size();
    for (size_t i = 0; i < n; ++i) {
        llama_token_data & td = data[i];
        if (td.id < 0 || td.id >= ctx->n_vocab || !std::isfinite(td.logit)) {
            continue;  // -inf (a grammar's) stays -inf
        }
        const float base = l0[td.id];
        float l = base + (1.0f + ctx->steer.applied[0]) * (td.logit - base);
        for (size_t k = 0; k < n_extra; ++k) {
            l += (1.0f + ctx->steer.applied[k + 1]) * (ctx->logits_extra[k][td.id] - base);
        }
        td.logit = l;
    }
}

// Clears the union marks for the next call.
static void linear_alignment_union_clear(llama_sampler_linear_alignment * ctx) {
    for (int32_t i : ctx->union_idx) {
        ctx->in_union[i] = 0;
    }
    ctx->union_idx.clear();
}

static bool linear_alignment_has_streams(const llama_sampler_linear_alignment * ctx) {
    for (const float * l : ctx->logits_extra) {
        if (l == nullptr) {
            return false;
        }
    }
    return ctx->logits_extra.size() == ctx->extra_ratios.size();
}

// Steering (linear_alignment_steering.h), before the nucleus cuts the
// candidates: each stream's step size and what the echo guard checks.
// logits_p: P's logits in id order (the dense entry point), or nullptr to
// read them from the candidate array.
static void linear_alignment_steer_begin(llama_sampler_linear_alignment * ctx, const llama_token_data * data, size_t n,
                                         const float * logits_p) {
    const bool has_base = ctx->logits_base != nullptr && linear_alignment_has_streams(ctx);
    linear_alignment_steering_start(ctx->steer, has_base ? ctx->logits_base : nullptr, ctx->logits_extra.data(),
                                    logits_p, data, n, (size_t) ctx->n_vocab);
}

// The echo guard, before the nucleus: the candidates it takes out
// (linear_alignment_steering_drops) go to -inf in a candidate array, unless
// that would leave no candidate (a vocabulary of a few tokens): then none is.
static void linear_alignment_guard_candidates(llama_sampler_linear_alignment * ctx, llama_token_data * data,
                                              size_t n) {
    const std::vector<llama_token> & drops = linear_alignment_steering_drops(ctx->steer);
    if (drops.empty()) {
        return;
    }
    const auto dropped = [&](llama_token id) { return std::find(drops.begin(), drops.end(), id) != drops.end(); };
    bool any_left = false;
    for (size_t i = 0; i < n && !any_left; ++i) {
        any_left = std::isfinite(data[i].logit) && !dropped(data[i].id);
    }
    if (!any_left) {
        ctx->steer.guarded.clear();
        return;
    }
    for (size_t i = 0; i < n; ++i) {
        if (dropped(data[i].id)) {
            data[i].logit = -INFINITY;
        }
    }
}

// The same on logits in id order (the dense entry point): stream `row`'s
// logits with the drops at -inf, in scratch, or the logits themselves when
// nothing is dropped. Call linear_alignment_steering_drops first.
static const float * linear_alignment_guard_row(llama_sampler_linear_alignment * ctx, const float * logits,
                                                size_t row) {
    const std::vector<llama_token> & drops = ctx->steer.drops;
    if (drops.empty() || ctx->steer.guarded.empty()) {
        return logits;
    }
    if (ctx->guarded_rows.size() <= row) {
        ctx->guarded_rows.resize(row + 1);
    }
    std::vector<float> & out = ctx->guarded_rows[row];
    out.assign(logits, logits + ctx->n_vocab);
    for (llama_token t : drops) {
        out[t] = -INFINITY;
    }
    return out.data();
}

// Whether the drops leave P a candidate in id order; when not, nothing is dropped.
static void linear_alignment_guard_check_dense(llama_sampler_linear_alignment * ctx, const float * logits_p) {
    const std::vector<llama_token> & drops = linear_alignment_steering_drops(ctx->steer);
    if (drops.empty()) {
        return;
    }
    for (size_t t = 0; t < (size_t) ctx->n_vocab; ++t) {
        if (std::isfinite(logits_p[t]) && std::find(drops.begin(), drops.end(), (llama_token) t) == drops.end()) {
            return;
        }
    }
    ctx->steer.guarded.clear();
}

// The composed apply on a candidate array (a grammar may have set some
// logits to -inf: those tokens are -inf in every principled stream too).
static void linear_alignment_apply_composed(llama_sampler_linear_alignment * ctx, llama_token_data_array * cur_p) {
    const size_t n = cur_p->size;
    linear_alignment_steer_begin(ctx, cur_p->data, n, nullptr);
    // every stream's nucleus then leaves the drops out (each reads the candidates' finiteness)
    linear_alignment_guard_candidates(ctx, cur_p->data, n);
    ctx->in_union.assign(std::max(ctx->in_union.size(), n), 0);
    ctx->union_idx.clear();
    linear_alignment_union_add(ctx, cur_p->data, n);
    if (linear_alignment_has_streams(ctx)) {
        auto & masked = ctx->masked;
        masked.resize(n);
        for (const float * lk : ctx->logits_extra) {
            for (size_t i = 0; i < n; ++i) {
                const llama_token_data & td = cur_p->data[i];
                const bool ok = td.id >= 0 && td.id < ctx->n_vocab && std::isfinite(td.logit);
                masked[i] = ok ? lk[td.id] : -INFINITY;
            }
            linear_alignment_union_add(ctx, masked.data(), n);
        }
    }
    if (ctx->union_idx.size() < n) {
        auto & kept = ctx->kept;
        kept.resize(ctx->union_idx.size());
        for (size_t j = 0; j < kept.size(); ++j) {
            kept[j] = cur_p->data[ctx->union_idx[j]];
        }
        std::copy(kept.begin(), kept.end(), cur_p->data);
        cur_p->size = kept.size();
    }
    linear_alignment_union_clear(ctx);
    if (linear_alignment_has_streams(ctx)) {
        linear_alignment_combine_composed(ctx, cur_p->data, cur_p->size);
    }
}

// The composed apply on P's full logits in id order (the dense entry point).
static size_t linear_alignment_apply_dense_composed(llama_sampler_linear_alignment * ctx, const float * logits_p,
                                                    llama_token_data * out) {
    const size_t n = (size_t) ctx->n_vocab;
    linear_alignment_steer_begin(ctx, nullptr, 0, logits_p);
    linear_alignment_guard_check_dense(ctx, logits_p);
    logits_p = linear_alignment_guard_row(ctx, logits_p, 0);
    ctx->in_union.assign(std::max(ctx->in_union.size(), n), 0);
    ctx->union_idx.clear();
    linear_alignment_union_add(ctx, logits_p, n);
    const bool streams = linear_alignment_has_streams(ctx);
    if (streams) {
        for (size_t k = 0; k < ctx->logits_extra.size(); ++k) {
            linear_alignment_union_add(ctx, linear_alignment_guard_row(ctx, ctx->logits_extra[k], k + 1), n);
        }
    }
    size_t n_keep = n;
    if (ctx->union_idx.size() < n) {
        n_keep = ctx->union_idx.size();
        for (size_t j = 0; j < n_keep; ++j) {
            const int32_t id = ctx->union_idx[j];
            out[j] = llama_token_data{id, logits_p[id], 0.0f};
        }
    } else {
        linear_alignment_fill_candidates(logits_p, n, out);
    }
    linear_alignment_union_clear(ctx);
    if (streams) {
        linear_alignment_combine_composed(ctx, out, n_keep);
    }
    return n_keep;
}

static void llama_sampler_linear_alignment_apply(struct llama_sampler * smpl, llama_token_data_array * cur_p) {
    auto * ctx = (llama_sampler_linear_alignment *) smpl->ctx;
    if (cur_p->size == 0) {
        return;
    }
    if (!ctx->extra_ratios.empty()) {
        linear_alignment_apply_composed(ctx, cur_p);
        cur_p->sorted   = false;
        cur_p->selected = -1;
        return;
    }

    linear_alignment_steer_begin(ctx, cur_p->data, cur_p->size, nullptr);
    linear_alignment_guard_candidates(ctx, cur_p->data, cur_p->size);
    const size_t n_keep = ctx->top_p >= 1.0f ? cur_p->size : linear_alignment_nucleus(ctx, cur_p->data, cur_p->size);
    if (n_keep < cur_p->size) {
        // move the nucleus to the front, its most likely tokens first (a
        // nucleus of more than 64 tokens is not wholly sorted; the chain's
        // later samplers do not rely on any order: sorted is false)
        auto & kept = ctx->kept;
        kept.resize(n_keep);
        for (size_t i = 0; i < n_keep; ++i) {
            kept[i] = cur_p->data[ctx->order[i]];
        }
        std::copy(kept.begin(), kept.end(), cur_p->data);
        cur_p->size = n_keep;
    }
    linear_alignment_combine(ctx, cur_p->data, cur_p->size);

    cur_p->sorted   = false; // the combine reorders tokens
    cur_p->selected = -1;
}

void linear_alignment_fill_candidates(const float * logits, size_t n, llama_token_data * out) {
    for (size_t i = 0; i < n; ++i) {
        out[i] = llama_token_data{(llama_token) i, logits[i], 0.0f};
    }
}

size_t llama_sampler_linear_alignment_apply_dense(llama_sampler * smpl, const float * logits_p, llama_token_data * out) {
    if (!llama_sampler_is_linear_alignment(smpl)) {
        throw std::invalid_argument("not a linear-alignment sampler");
    }
    auto * ctx = (llama_sampler_linear_alignment *) smpl->ctx;
    if (!ctx->extra_ratios.empty()) {
        return linear_alignment_apply_dense_composed(ctx, logits_p, out);
    }
    const size_t n = (size_t) ctx->n_vocab;
    linear_alignment_steer_begin(ctx, nullptr, 0, logits_p);
    linear_alignment_guard_check_dense(ctx, logits_p);
    logits_p = linear_alignment_guard_row(ctx, logits_p, 0);
    const size_t n_keep = ctx->top_p >= 1.0f ? n : linear_alignment_nucleus(ctx, logits_p, n);
    if (n_keep < n) {
        for (size_t i = 0; i < n_keep; ++i) {
            const int32_t id = ctx->order[i];
            out[i] = llama_token_data{id, logits_p[id], 0.0f};
        }
    } else {
        linear_alignment_fill_candidates(logits_p, n, out);
    }
    linear_alignment_combine(ctx, out, n_keep);
    return n_keep;
}

// The best combined token among those of weight >= threshold (every token
// when weight is null): the first of the largest, as one scan finds it.
static llama_token linear_alignment_best_of(int32_t n_threads, const float * src, const float * l0, float r, size_t n,
                                            const float * weight, float threshold) {
    int32_t part_best[LINEAR_ALIGNMENT_N_PARTS];
    linear_alignment_for_parts(n_threads, n, LINEAR_ALIGNMENT_SPLIT_LIGHT, [&](int k) {
        const vocab_part p = linear_alignment_part(n, k);
        const int32_t i = linear_alignment_best_combined(src + p.begin, l0 + p.begin, r,
                                                         weight == nullptr ? nullptr : weight + p.begin, p.n, threshold);
        part_best[k] = i < 0 ? -1 : i + (int32_t) p.begin;
    });
    const auto combined = [&](int32_t i) { return linear_alignment_combined(src[i], l0[i], r); };
    return part_best[0] < 0 ? part_best[1]
         : part_best[1] < 0 ? part_best[0]
         : combined(part_best[1]) > combined(part_best[0]) ? part_best[1] : part_best[0];
}

// Whether token b is in P's nucleus for sure, before any exact exp: the
// tokens at least as likely as b (b aside) hold less than top_p of the mass
// even with the bounds of one pass of an exp within 6.2% (the mass above b
// at its most, the total at its least: linear_alignment_approx_masses).
// Enough when b is P's best token or near it, and for most steps of a flat
// distribution (the synthetic model's at 49k: the mass above the best
// combined token about 13% of the total, against top_p 0.8). A token below
// the last guess (e^-16 of P's best) is not tried.
static bool linear_alignment_surely_in_nucleus(const llama_sampler_linear_alignment * ctx, const float * src,
                                               size_t n, float max_logit, float inv_t, llama_token b) {
    const float z = (src[b] - max_logit) * inv_t;
    if (!(z >= -16.0f)) {
        return false;
    }
    double part_all[LINEAR_ALIGNMENT_N_PARTS], part_at_least[LINEAR_ALIGNMENT_N_PARTS];
    linear_alignment_for_parts(ctx->n_threads, n, LINEAR_ALIGNMENT_SPLIT_LIGHT, [&](int k) {
        const vocab_part p = linear_alignment_part(n, k);
        linear_alignment_approx_masses(src + p.begin, p.n, max_logit, inv_t, src[b], &part_all[k], &part_at_least[k]);
    });
    const double total_least = (part_all[0] + part_all[1]) * LINEAR_ALIGNMENT_APPROX_LOW;
    const double above_most  = (part_at_least[0] + part_at_least[1]) * LINEAR_ALIGNMENT_APPROX_HIGH -
                              linear_alignment_approx_exp(z) * LINEAR_ALIGNMENT_APPROX_LOW;
    return above_most < ctx->top_p * total_least;
}

// Greedy over the combine: the token of the best combined logit inside P's
// nucleus, without cutting the nucleus. A token is in the nucleus when the
// tokens more likely than it hold less than top_p of the mass (the nucleus
// being the shortest run of tokens, by decreasing weight, that reaches it).
// So: the best combined token among those that can be in it; if the mass
// above it is short of top_p it is the answer, else neither it nor any token
// as unlikely is in the nucleus, and the best of the more likely ones is
// tried. Usually the first is in (the combine favours P's likely tokens):
// a few passes over the vocabulary in id order, where the exact cut of a
// flat distribution (thousands of tokens) sorts them. Returns -1 when
// nothing finite is left, or after MAX_TRIES (the exact cut decides).
//
// The masses are summed as the guesses' are, in float blocks, at a third
// of the cost of sums in double per weight. Where a mass and the target lie
// further apart than those sums' roundings (LINEAR_ALIGNMENT_MASS_SLACK) it
// is the exact sums' answer; within it, the exact sums decide.
//
// Before any weight: the best combined token of the whole vocabulary is the
// answer when it is surely in the nucleus (linear_alignment_surely_in_nucleus).
static llama_token linear_alignment_nucleus_best(llama_sampler_linear_alignment * ctx, const float * src, size_t n,
                                                 float r, const float * l0) {
    constexpr int MAX_TRIES = 8;
    const int32_t n_threads = ctx->n_threads;
    float part_max[LINEAR_ALIGNMENT_N_PARTS];
    linear_alignment_for_parts(n_threads, n, LINEAR_ALIGNMENT_SPLIT_LIGHT, [&](int k) {
        const vocab_part p = linear_alignment_part(n, k);
        part_max[k] = linear_alignment_max_logit(src + p.begin, p.n);
    });
    const float max_logit = part_max[1] > part_max[0] ? part_max[1] : part_max[0];
    if (!std::isfinite(max_logit)) {
        return -1;
    }
    const float inv_t = ctx->temperature > 0.0f ? 1.0f / ctx->temperature : 1.0f;
    const llama_token best_of_all = linear_alignment_best_of(n_threads, src, l0, r, n, nullptr, 0.0f);
    if (best_of_all < 0) {
        return -1; // no finite combined logit: let the exact path decide
    }
    if (linear_alignment_surely_in_nucleus(ctx, src, n, max_logit, inv_t, best_of_all)) {
        return best_of_all;
    }
    double total = 0.0;
    // when no guess holds the target, every token (floor 0): the test below is exact over any superset
    float threshold = linear_alignment_threshold(ctx, src, n, max_logit, inv_t, 0.0f, false, &total);
    const float * weight = ctx->weight.data();
    double exact_total = -1.0; // summed when a test first needs it
    const auto mass_above = [&](float w, bool exact) {
        double part[LINEAR_ALIGNMENT_N_PARTS];
        linear_alignment_for_parts(n_threads, n, LINEAR_ALIGNMENT_SPLIT_LIGHT, [&](int k) {
            const vocab_part p = linear_alignment_part(n, k);
            part[k] = exact ? linear_alignment_mass_above(weight + p.begin, p.n, w)
                            : linear_alignment_mass_above_estimate(weight + p.begin, p.n, w);
        });
        return part[0] + part[1];
    };
    // whether the tokens more likely than one of weight w hold less than top_p of the mass
    const auto short_of_target = [&](float w) {
        const double above = mass_above(w, false);
        const double slack = LINEAR_ALIGNMENT_MASS_SLACK * total;
        if (std::fabs(above - ctx->top_p * total) > slack) {
            return above < ctx->top_p * total;
        }
        if (exact_total < 0.0) {
            exact_total = mass_above(-INFINITY, true);
        }
        return mass_above(w, true) < ctx->top_p * exact_total;
    };
    for (int tries = 0; tries < MAX_TRIES; ++tries) {
        // the best of all, when a candidate, is the candidates' best (the first of the largest)
        const llama_token best = tries == 0 && weight[best_of_all] >= threshold
                                   ? best_of_all
                                   : linear_alignment_best_of(n_threads, src, l0, r, n, weight, threshold);
        if (best < 0) {
            return -1; // no finite combined logit: let the exact path decide
        }
        const float w_best = weight[best];
        if (short_of_target(w_best)) {
            return best;
        }
        // only tokens more likely than it can be in the nucleus
        threshold = std::nextafter(w_best, INFINITY);
    }
    return -1;
}

size_t llama_sampler_linear_alignment_apply_dense_best(llama_sampler * smpl, const float * logits_p,
                                                       llama_token_data * out) {
    if (!llama_sampler_is_linear_alignment(smpl)) {
        throw std::invalid_argument("not a linear-alignment sampler");
    }
    auto * ctx = (llama_sampler_linear_alignment *) smpl->ctx;
    if (!ctx->extra_ratios.empty()) {
        throw std::invalid_argument("apply_dense_best takes one principle at most");
    }
    const size_t n = (size_t) ctx->n_vocab;
    linear_alignment_steer_begin(ctx, nullptr, 0, logits_p);
    linear_alignment_guard_check_dense(ctx, logits_p);
    const float * row = linear_alignment_guard_row(ctx, logits_p, 0);
    const float r = ctx->steer.applied[0];
    llama_token id = -1;
    if (ctx->logits_base == nullptr || r == 0.0f) {
        // P alone: its best token is always in its nucleus
        id = linear_alignment_argmax(row, n);
        if (!std::isfinite(row[id])) {
            id = -1; // nothing finite: apply_dense's answer below
        }
    } else if (ctx->top_p >= 1.0f) {
        id = -1; // every token: the combine over the whole vocabulary (apply_dense) is as cheap
    } else {
        id = linear_alignment_nucleus_best(ctx, row, n, r, ctx->logits_base);
    }
    if (id < 0) {
        // undecided (or nothing finite): the exact nucleus, as apply_dense cuts it; the steering state is
        // set again from the same logits, to the same values
        return llama_sampler_linear_alignment_apply_dense(smpl, logits_p, out);
    }
    const float l = ctx->logits_base == nullptr || r == 0.0f ? row[id]
                                                             : linear_alignment_combined(row[id], ctx->logits_base[id], r);
    out[0] = llama_token_data{id, l, 0.0f};
    return 1;
}

static void llama_sampler_linear_alignment_accept(struct llama_sampler * smpl, llama_token token) {
    linear_alignment_steering_accept(((llama_sampler_linear_alignment *) smpl->ctx)->steer, token);
}

static void llama_sampler_linear_alignment_reset(struct llama_sampler * smpl) {
    linear_alignment_steering_reset(((llama_sampler_linear_alignment *) smpl->ctx)->steer);
}

static struct llama_sampler * llama_sampler_linear_alignment_clone(const struct llama_sampler * smpl) {
    const auto * ctx = (const llama_sampler_linear_alignment *) smpl->ctx;
    const auto & st = ctx->steer;
    llama_sampler_linear_alignment_params params{ctx->ratio, ctx->top_p, ctx->temperature};
    params.auto_ratio  = st.auto_ratio[0] != 0;
    params.echo_n      = st.echo_n;
    params.principle   = st.principles[0].data();
    params.n_principle = st.principles[0].size();
    std::vector<llama_sampler_linear_alignment_extra> extra;
    for (size_t k = 0; k < ctx->extra_ratios.size(); ++k) {
        extra.push_back({ctx->extra_ratios[k], st.auto_ratio[k + 1] != 0, st.principles[k + 1].data(),
                         st.principles[k + 1].size()});
    }
    llama_sampler * result = llama_sampler_init_linear_alignment_composed(params, extra.data(), extra.size(),
                                                                          ctx->n_vocab);
    auto * copy = (llama_sampler_linear_alignment *) result->ctx;
    copy->logits_base  = ctx->logits_base;
    copy->logits_extra = ctx->logits_extra;
    copy->steer.recent = st.recent;
    return result;
}

static void llama_sampler_linear_alignment_free(struct llama_sampler * smpl) {
    delete (llama_sampler_linear_alignment *) smpl->ctx;
}

static struct llama_sampler_i llama_sampler_linear_alignment_i = {
    /* .name              = */ llama_sampler_linear_alignment_name,
    /* .accept            = */ llama_sampler_linear_alignment_accept,
    /* .apply             = */ llama_sampler_linear_alignment_apply,
    /* .reset             = */ llama_sampler_linear_alignment_reset,
    /* .clone             = */ llama_sampler_linear_alignment_clone,
    /* .free              = */ llama_sampler_linear_alignment_free,
    /* .backend_init      = */ nullptr,
    /* .backend_accept    = */ nullptr,
    /* .backend_apply     = */ nullptr,
    /* .backend_set_input = */ nullptr,
    /* .backend_reset     = */ nullptr,
    /* .copy_state        = */ nullptr,
};

void linear_alignment_validate(const llama_sampler_linear_alignment_params & params) {
    if (!std::isfinite(params.ratio)) {
        throw std::invalid_argument("ratio must be a finite number, got " + std::to_string(params.ratio));
    }
    if (!std::isfinite(params.top_p) || params.top_p <= 0.0f || params.top_p > 1.0f) {
        throw std::invalid_argument("top_p must be in (0, 1], got " + std::to_string(params.top_p));
    }
    if (!std::isfinite(params.temperature) || params.temperature < 0.0f) {
        throw std::invalid_argument("temperature must be a finite number >= 0, got " + std::to_string(params.temperature));
    }
    if (params.echo_n != 0 && params.echo_n < 2) {
        throw std::invalid_argument("echo_n must be 0 (no echo guard) or >= 2, got " + std::to_string(params.echo_n));
    }
    if (params.n_principle > 0 && params.principle == nullptr) {
        throw std::invalid_argument("principle is null");
    }
}

llama_sampler * llama_sampler_init_linear_alignment(const llama_sampler_linear_alignment_params & params, int32_t n_vocab) {
    return llama_sampler_init_linear_alignment_composed(params, nullptr, 0, n_vocab);
}

llama_sampler * llama_sampler_init_linear_alignment_composed(const llama_sampler_linear_alignment_params & params,
                                                             const llama_sampler_linear_alignment_extra * extra,
                                                             size_t n_extra, int32_t n_vocab) {
    linear_alignment_validate(params);
    if (n_vocab <= 0) {
        throw std::invalid_argument("n_vocab must be positive");
    }
    if (n_extra + 1 > LINEAR_ALIGNMENT_MAX_PRINCIPLES) {
        throw std::invalid_argument("at most " + std::to_string(LINEAR_ALIGNMENT_MAX_PRINCIPLES) +
                                    " principles, got " + std::to_string(n_extra + 1));
    }
    if (n_extra > 0 && extra == nullptr) {
        throw std::invalid_argument("extra is null");
    }
    std::vector<float> ratios{params.ratio};
    std::vector<uint8_t> auto_ratio{params.auto_ratio};
    std::vector<std::vector<llama_token>> principles{{params.principle, params.principle + params.n_principle}};
    for (size_t k = 0; k < n_extra; ++k) {
        if (!std::isfinite(extra[k].ratio)) {
            throw std::invalid_argument("ratio of principle " + std::to_string(k + 2) + " must be a finite number");
        }
        if (extra[k].n_principle > 0 && extra[k].principle == nullptr) {
            throw std::invalid_argument("principle " + std::to_string(k + 2) + " is null");
        }
        ratios.push_back(extra[k].ratio);
        auto_ratio.push_back(extra[k].auto_ratio);
        principles.emplace_back(extra[k].principle, extra[k].principle + extra[k].n_principle);
    }
    std::vector<float> extra_ratios(ratios.begin() + 1, ratios.end());
    return llama_sampler_init(
        /* .iface = */ &llama_sampler_linear_alignment_i,
        /* .ctx   = */ new llama_sampler_linear_alignment {
            /* .ratio       = */ params.ratio,
            /* .top_p       = */ params.top_p,
            /* .temperature = */ params.temperature,
            /* .n_vocab     = */ n_vocab,
            /* .logits_base = */ nullptr,
            /* .extra_ratios = */ std::move(extra_ratios),
            /* .logits_extra = */ std::vector<const float *>(n_extra, nullptr),
            /* .steer       = */ linear_alignment_steering_init(std::move(ratios), std::move(auto_ratio),
                                                                params.echo_n, std::move(principles)),
            /* .order       = */ {},
            /* .bin_mass    = */ std::vector<double>(4096),
            /* .weight      = */ {},
            /* .kept        = */ {},
            /* .masked      = */ {},
            /* .in_union    = */ {},
            /* .union_idx   = */ {},
            /* .guarded_rows = */ {},
        });
}

static llama_sampler_linear_alignment * linear_alignment_ctx(const llama_sampler * smpl) {
    if (!llama_sampler_is_linear_alignment(smpl)) {
        throw std::invalid_argument("not a linear-alignment sampler");
    }
    return (llama_sampler_linear_alignment *) smpl->ctx;
}

const float * llama_sampler_linear_alignment_applied_ratios(const llama_sampler * smpl, size_t * n) {
    const auto & st = linear_alignment_ctx(smpl)->steer;
    *n = st.applied.size();
    return st.applied.data();
}

const linear_alignment_guard * llama_sampler_linear_alignment_guarded(const llama_sampler * smpl, size_t * n) {
    const auto & st = linear_alignment_ctx(smpl)->steer;
    *n = st.guarded.size();
    return st.guarded.data();
}

void llama_sampler_linear_alignment_set_guarded(llama_sampler * smpl, const linear_alignment_guard * guards, size_t n) {
    if (n > 0 && guards == nullptr) {
        throw std::invalid_argument("guards is null");
    }
    linear_alignment_steering_replay(linear_alignment_ctx(smpl)->steer, guards, n);
}

void llama_sampler_linear_alignment_set_base(llama_sampler * smpl, const float * logits_base) {
    if (!llama_sampler_is_linear_alignment(smpl)) {
        throw std::invalid_argument("not a linear-alignment sampler");
    }
    ((llama_sampler_linear_alignment *) smpl->ctx)->logits_base = logits_base;
}

void llama_sampler_linear_alignment_set_threads(llama_sampler * smpl, int32_t n_threads) {
    if (!llama_sampler_is_linear_alignment(smpl)) {
        throw std::invalid_argument("not a linear-alignment sampler");
    }
    ((llama_sampler_linear_alignment *) smpl->ctx)->n_threads = std::max<int32_t>(1, n_threads);
}

void llama_sampler_linear_alignment_set_principled(llama_sampler * smpl, const float * const * logits, size_t n) {
    if (!llama_sampler_is_linear_alignment(smpl)) {
        throw std::invalid_argument("not a linear-alignment sampler");
    }
    auto * ctx = (llama_sampler_linear_alignment *) smpl->ctx;
    if (n != ctx->extra_ratios.size()) {
        throw std::invalid_argument("the sampler composes " + std::to_string(ctx->extra_ratios.size()) +
                                    " extra principled streams, got " + std::to_string(n));
    }
    for (size_t k = 0; k < n; ++k) {
        ctx->logits_extra[k] = logits == nullptr ? nullptr : logits[k];
    }
}

bool llama_sampler_is_linear_alignment(const llama_sampler * smpl) {
    return smpl != nullptr && smpl->iface == &llama_sampler_linear_alignment_i;
}
