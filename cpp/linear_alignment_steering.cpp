// linear-alignment steering: the per-token step sizes (fixed or "auto") and
// the echo guard. See linear_alignment_steering.h.
#include "linear_alignment_steering.h"
#include "linear_alignment_divergence.h"

#include <algorithm>
#include <cmath>
#include <utility>

linear_alignment_steering linear_alignment_steering_init(std::vector<float> ratios, std::vector<uint8_t> auto_ratio,
                                                         int32_t echo_n,
                                                         std::vector<std::vector<llama_token>> principles) {
    const size_t k = ratios.size();
    auto_ratio.resize(k, 0);
    principles.resize(k);
    return linear_alignment_steering{
        /* .ratios     = */ std::move(ratios),
        /* .auto_ratio = */ std::move(auto_ratio),
        /* .echo_n     = */ echo_n,
        /* .principles = */ std::move(principles),
        /* .recent     = */ {},
        /* .applied    = */ std::vector<float>(k, 0.0f),
        /* .guarded    = */ {},
        /* .lse        = */ std::vector<double>(k, NAN),
        /* .lse_base   = */ 0.0,
        /* .pending    = */ {},
        /* .replay     = */ false,
        /* .continuations = */ {},
        /* .drops      = */ {},
        /* .rows       = */ {},
        /* .row_base   = */ nullptr,
        /* .n_vocab    = */ 0,
        /* .id_rows    = */ {},
        /* .id_base    = */ {},
    };
}

void linear_alignment_steering_accept(linear_alignment_steering & st, llama_token token) {
    if (st.echo_n < 2) {
        return;
    }
    // only the last n-1 tokens matter; n is small, so a shift is cheap
    st.recent.push_back(token);
    if (st.recent.size() > (size_t) st.echo_n - 1) {
        st.recent.erase(st.recent.begin());
    }
}

void linear_alignment_steering_reset(linear_alignment_steering & st) {
    st.recent.clear();
    st.pending.clear();
    st.replay = false;
}

void linear_alignment_steering_replay(linear_alignment_steering & st, const linear_alignment_guard * guards, size_t n) {
    st.pending.assign(guards, guards + n);
    st.replay = true;
}

void linear_alignment_echo_continuations(const std::vector<llama_token> & principle,
                                         const std::vector<llama_token> & recent, size_t n,
                                         std::vector<llama_token> & out) {
    if (n < 2 || recent.size() < n - 1 || principle.size() < n) {
        return;  // a principle shorter than n: nothing it could be echoed by
    }
    const auto tail = recent.end() - (std::ptrdiff_t) (n - 1);
    for (size_t j = 0; j + n <= principle.size(); ++j) {
        if (std::equal(tail, recent.end(), principle.begin() + (std::ptrdiff_t) j)) {
            const llama_token next = principle[j + n - 1];
            if (std::find(out.begin(), out.end(), next) == out.end()) {
                out.push_back(next);
            }
        }
    }
}

static double lse_of(linear_alignment_steering & st, const float * const * rows, size_t k, size_t n) {
    if (std::isnan(st.lse[k])) {
        st.lse[k] = linear_alignment_logsumexp(rows[k], n);
    }
    return st.lse[k];
}

static bool steering_plan(linear_alignment_steering & st, bool has_base) {
    const size_t k_streams = st.ratios.size();
    st.guarded.clear();
    const bool replay = st.replay;
    st.replay = false;
    if (!replay) {
        st.pending.clear();
    }
    if (!has_base) {
        std::fill(st.applied.begin(), st.applied.end(), 0.0f);
        st.pending.clear();
        return false;
    }
    if (!replay && st.echo_n >= 2) {
        std::vector<llama_token> & next = st.continuations;
        for (size_t k = 0; k < k_streams; ++k) {
            next.clear();
            linear_alignment_echo_continuations(st.principles[k], st.recent, (size_t) st.echo_n, next);
            for (llama_token t : next) {
                st.pending.push_back({(int32_t) k, t});
            }
        }
    }
    bool any_auto = false;
    for (size_t k = 0; k < k_streams; ++k) {
        any_auto = any_auto || st.auto_ratio[k];
        st.applied[k] = st.ratios[k];  // begin sets the automatic ones
    }
    return any_auto || !st.pending.empty();
}

static void steering_begin(linear_alignment_steering & st, const float * const * rows, const float * base,
                                     size_t n) {
    const size_t k_streams = st.ratios.size();
    std::fill(st.lse.begin(), st.lse.end(), NAN);
    if (base == nullptr || rows == nullptr) {
        return;
    }
    bool base_done = false;
    const auto need_base = [&]() {
        if (!base_done) {
            st.lse_base = linear_alignment_logsumexp(base, n);
            base_done = true;
        }
    };
    for (size_t k = 0; k < k_streams; ++k) {
        if (st.auto_ratio[k]) {
            need_base();
            const double jsd = linear_alignment_jsd_bits(rows[k], lse_of(st, rows, k, n), base, st.lse_base, n);
            st.applied[k] = linear_alignment_auto_step((float) jsd);
        }
    }
    // the guard compares log-probabilities: the normalisers of the streams it checks
    for (const linear_alignment_guard & g : st.pending) {
        if (g.stream >= 0 && (size_t) g.stream < k_streams) {
            need_base();
            lse_of(st, rows, (size_t) g.stream, n);
        }
    }
}

void linear_alignment_steering_start(linear_alignment_steering & st, const float * base, const float * const * extra,
                                     const float * logits_p, const llama_token_data * data, size_t n, size_t n_vocab) {
    st.rows.clear();
    st.row_base = nullptr;
    st.n_vocab  = n_vocab;
    if (!steering_plan(st, base != nullptr)) {
        return;
    }
    const size_t n_extra = st.ratios.size() - 1;
    if (logits_p != nullptr) {
        st.rows.push_back(logits_p);
        st.rows.insert(st.rows.end(), extra, extra + n_extra);
        st.row_base = base;
    } else {
        st.id_rows.resize(1 + n_extra);
        for (auto & row : st.id_rows) {
            row.assign(n_vocab, -INFINITY);
        }
        st.id_base.assign(n_vocab, -INFINITY);
        for (size_t i = 0; i < n; ++i) {
            if (data[i].id >= 0 && (size_t) data[i].id < n_vocab) {
                st.id_rows[0][data[i].id] = data[i].logit;
            }
        }
        for (size_t t = 0; t < n_vocab; ++t) {
            if (std::isfinite(st.id_rows[0][t])) {
                st.id_base[t] = base[t];
                for (size_t k = 0; k < n_extra; ++k) {
                    st.id_rows[k + 1][t] = extra[k][t];
                }
            }
        }
        for (const auto & row : st.id_rows) {
            st.rows.push_back(row.data());
        }
        st.row_base = st.id_base.data();
    }
    steering_begin(st, st.rows.data(), st.row_base, n_vocab);
}

const std::vector<llama_token> & linear_alignment_steering_drops(linear_alignment_steering & st) {
    st.drops.clear();
    const float * base = st.row_base;
    const float * const * rows = st.rows.data();
    const size_t n = st.n_vocab;
    if (base == nullptr || st.rows.empty()) {
        st.pending.clear();
        return st.drops;
    }
    for (const linear_alignment_guard & g : st.pending) {
        if (g.stream < 0 || (size_t) g.stream >= st.ratios.size() || g.token < 0 || (size_t) g.token >= n) {
            continue;
        }
        const double lse = st.lse[(size_t) g.stream];
        if (!std::isfinite(lse) || !std::isfinite(st.lse_base) || !std::isfinite(rows[g.stream][g.token])) {
            continue;  // a stream with nothing plausible, or a token already out (a grammar's)
        }
        const float r = st.applied[(size_t) g.stream];
        const double lp = rows[g.stream][g.token] - lse;
        const double l0 = base[g.token] - st.lse_base;
        if (!((double) r * (lp - l0) > 0.0)) {
            continue;  // alignment does not favour it here (or NaN): nothing to guard
        }
        st.guarded.push_back(g);
        if (std::find(st.drops.begin(), st.drops.end(), g.token) == st.drops.end()) {
            st.drops.push_back(g.token);
        }
    }
    st.pending.clear();
    return st.drops;
}
