// token_logprobs: a sampled token's logprob entry (see token_logprobs.h).
#include "token_logprobs.h"

#include "linear_alignment_divergence.h"
#include "linear_alignment_weights.h"
#include "llama_handles.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace linalign {

// The first index of the largest value (numpy's argmax), over ids when given.
static llama_token argmax(const float * logits, int32_t n_vocab, const std::vector<llama_token> * ids) {
    if (ids == nullptr) {
        return linear_alignment_argmax(logits, (size_t) n_vocab);
    }
    llama_token best = -1;
    for (llama_token t : *ids) {
        if (best < 0 || logits[t] > logits[best]) {
            best = t;
        }
    }
    return best;
}

token_logprob token_logprob_calculator::compute(llama_token token, const sampled_logits & in, float top_p,
                                                float temperature, int32_t k) {
    if (in.logits_p == nullptr || in.logits_b == nullptr) {
        throw std::invalid_argument("token logprobs need stream P's logits and B's (P's when B is not decoded)");
    }
    if (k < 0 || k > MAX_TOP_LOGPROBS) {
        throw std::invalid_argument("top logprobs must be in [0, " + std::to_string(MAX_TOP_LOGPROBS) + "], got " +
                                    std::to_string(k));
    }
    if (in.ratios.size() != 1 + in.logits_extra.size()) {
        throw std::invalid_argument("token logprobs: one step size per principled stream (" +
                                    std::to_string(1 + in.logits_extra.size()) + "), got " +
                                    std::to_string(in.ratios.size()));
    }
    if (token < 0 || token >= n_vocab_) {
        throw std::invalid_argument("token logprobs: token id " + std::to_string(token) + " outside the vocabulary");
    }

    // The distribution the token was drawn from: the linear-alignment step
    // replayed on the same logits, at the step sizes applied and with the
    // echo guard's drops, at temperature 1 for the logprobs themselves.
    llama_sampler_linear_alignment_params params{in.ratios[0], top_p, temperature};
    std::vector<llama_sampler_linear_alignment_extra> extra;
    for (size_t i = 1; i < in.ratios.size(); ++i) {
        extra.push_back({in.ratios[i], false, nullptr, 0});
    }
    sampler_ptr replay(llama_sampler_init_linear_alignment_composed(params, extra.data(), extra.size(), n_vocab_));
    llama_sampler * smpl = replay.get();
    llama_sampler_linear_alignment_set_guarded(smpl, in.guarded.data(), in.guarded.size());
    llama_sampler_linear_alignment_set_base(smpl, in.logits_b);
    llama_sampler_linear_alignment_set_principled(smpl, in.logits_extra.data(), in.logits_extra.size());
    cur_.resize(n_vocab_);
    size_t n_cur = 0;
    if (in.grammar_allowed == nullptr) {
        n_cur = llama_sampler_linear_alignment_apply_dense(smpl, in.logits_p, cur_.data());
    } else {
        // what the grammar handed the alignment step: P's candidates, the
        // rejected ones at -inf, in id order (the sampler's candidate path)
        masked_p_.assign(n_vocab_, -INFINITY);
        for (llama_token t : *in.grammar_allowed) {
            masked_p_[t] = in.logits_p[t];
        }
        linear_alignment_fill_candidates(masked_p_.data(), n_vocab_, cur_.data());
        llama_token_data_array cur_p = {cur_.data(), (size_t) n_vocab_, -1, false};
        llama_sampler_apply(smpl, &cur_p);
        n_cur = cur_p.size;
    }
    size_t n_ratios = 0;
    const float * applied = llama_sampler_linear_alignment_applied_ratios(smpl, &n_ratios);

    // log-softmax over the finite candidates (a grammar's -inf ones have
    // probability 0), in double as the logprobs are reported
    finite_.clear();
    double max_logit = -INFINITY;
    for (size_t i = 0; i < n_cur; ++i) {
        if (std::isfinite(cur_[i].logit)) {
            finite_.push_back((int32_t) i);
            max_logit = std::max(max_logit, (double) cur_[i].logit);
        }
    }
    if (finite_.empty()) {
        throw std::runtime_error("token logprobs: the aligned distribution holds no token");
    }
    double sum = 0.0;
    for (int32_t i : finite_) {
        sum += std::exp((double) cur_[i].logit - max_logit);
    }
    const double lse = max_logit + std::log(sum);
    logprobs_.resize(finite_.size());
    token_logprob out;
    for (size_t j = 0; j < finite_.size(); ++j) {
        logprobs_[j] = (double) cur_[finite_[j]].logit - lse;
        if (cur_[finite_[j]].id == token) {
            out.logprob = logprobs_[j];
        }
    }
    if (k > 0) {
        top_entries(in, k, out);
    }

    out.plain_top_token = argmax(in.logits_b, n_vocab_, in.grammar_allowed);
    const double lse_b = linear_alignment_logsumexp(in.logits_b, n_vocab_);
    const double lse_p = in.logits_p == in.logits_b ? lse_b : linear_alignment_logsumexp(in.logits_p, n_vocab_);
    out.plain_top_logprob  = (double) in.logits_b[out.plain_top_token] - lse_b;
    out.logprob_plain      = (double) in.logits_b[token] - lse_b;
    out.logprob_principled = (double) in.logits_p[token] - lse_p;
    out.ratio        = n_ratios > 0 ? applied[0] : 0.0f;
    out.echo_guarded = !in.guarded.empty();
    return out;
}

// The k most likely candidates (ties: the lower id first), then, when the
// nucleus holds fewer, stream P's next most likely tokens at ZERO_LOGPROB
// (a grammar's rejected tokens after every allowed one).
void token_logprob_calculator::top_entries(const sampled_logits & in, int32_t k, token_logprob & out) {
    const size_t n_finite = finite_.size();
    const size_t n = std::min<size_t>(k, n_finite);
    order_.resize(n_finite);
    std::iota(order_.begin(), order_.end(), 0);
    std::partial_sort(order_.begin(), order_.begin() + n, order_.end(), [this](int32_t a, int32_t b) {
        if (logprobs_[a] != logprobs_[b]) {
            return logprobs_[a] > logprobs_[b];
        }
        return cur_[finite_[a]].id < cur_[finite_[b]].id;
    });
    for (size_t j = 0; j < n; ++j) {
        out.top.push_back(cur_[finite_[order_[j]]].id);
        out.top_logprobs.push_back(logprobs_[order_[j]]);
    }
    const size_t need = std::min<size_t>(k, n_vocab_) - n;
    if (need == 0) {
        return;
    }
    rejected_.assign(n_vocab_, in.grammar_allowed != nullptr);
    if (in.grammar_allowed != nullptr) {
        for (llama_token t : *in.grammar_allowed) {
            rejected_[t] = 0;
        }
    }
    const auto rank = [&](llama_token t) { return (double) in.logits_p[t] - (rejected_[t] ? 1e9 : 0.0); };
    // the nucleus's own tokens are skipped: at most n_finite + need are looked at
    const size_t m = std::min<size_t>(need + n_finite, n_vocab_);
    order_.resize(n_vocab_);
    std::iota(order_.begin(), order_.end(), 0);
    std::partial_sort(order_.begin(), order_.begin() + m, order_.end(), [&](int32_t a, int32_t b) {
        const double ra = rank(a), rb = rank(b);
        return ra != rb ? ra > rb : a < b;
    });
    for (size_t j = 0; j < m && out.top.size() < n + need; ++j) {
        const llama_token t = order_[j];
        const bool in_nucleus = std::any_of(finite_.begin(), finite_.end(),
                                            [&](int32_t i) { return cur_[i].id == t; });
        if (!in_nucleus) {
            out.top.push_back(t);
            out.top_logprobs.push_back(ZERO_LOGPROB);
        }
    }
}

} // namespace linalign
