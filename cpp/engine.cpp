// engine: batched two-stream prefill and decode over one llama_context.
#include "engine.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace linalign {

static size_t common_prefix(const std::vector<llama_token> & a, const std::vector<llama_token> & b) {
    const size_t n = std::min(a.size(), b.size());
    size_t i = 0;
    while (i < n && a[i] == b[i]) {
        ++i;
    }
    return i;
}

engine::engine(std::shared_ptr<model> mdl, const engine_params & params) : model_(std::move(mdl)), params_(params) {
    if (!model_ || model_->closed()) {
        throw std::invalid_argument("engine needs an open model");
    }
    if (params.n_ctx < 8) {
        throw std::invalid_argument("n_ctx must be at least 8, got " + std::to_string(params.n_ctx));
    }
    if (params.n_threads < 0 || params.n_threads_batch < 0) {
        throw std::invalid_argument("n_threads must be >= 0");
    }
    n_vocab_ = model_->n_vocab();

    // Both streams live in one unified KV cache so that a token can belong to
    // both sequences (the shared prompt prefix is stored and computed once).
    // Each stream may use up to n_ctx positions, hence 2 * n_ctx cells.
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx      = 2 * (uint32_t) params.n_ctx;
    cparams.n_batch    = 2 * (uint32_t) params.n_ctx;
    cparams.n_seq_max  = 2;
    cparams.kv_unified = true;
    cparams.no_perf    = true;
    cparams.flash_attn_type = params.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (params.n_threads > 0) {
        cparams.n_threads = params.n_threads;
    }
    cparams.n_threads_batch = params.n_threads_batch > 0 ? params.n_threads_batch : cparams.n_threads;

    ctx_ = llama_init_from_model(model_->get(), cparams);
    if (ctx_ == nullptr) {
        throw std::runtime_error("llama.cpp could not create a context (n_ctx " + std::to_string(params.n_ctx) +
                                 " per stream; out of memory?)");
    }
    batch_capacity_ = (int32_t) cparams.n_batch;
    batch_          = llama_batch_init(batch_capacity_, 0, 2);
    logits_p_copy_.resize(n_vocab_);
}

engine::~engine() { close(); }

void engine::close() {
    chain_.reset();
    if (ctx_ != nullptr) {
        llama_batch_free(batch_);
        batch_ = {};
        llama_free(ctx_);
        ctx_ = nullptr;
    }
    cached_[0].clear();
    cached_[1].clear();
    model_.reset();
}

void engine::require_open() const {
    if (ctx_ == nullptr) {
        throw std::runtime_error("engine is closed");
    }
}

void engine::clear() {
    require_open();
    llama_memory_clear(llama_get_memory(ctx_), true);
    cached_[0].clear();
    cached_[1].clear();
    chain_.reset();
}

void engine::check_prompt(const std::vector<llama_token> & prompt, const char * name) const {
    if (prompt.empty()) {
        throw std::invalid_argument(std::string(name) + " is empty: it needs at least one token");
    }
    if ((int32_t) prompt.size() >= params_.n_ctx) {
        throw std::invalid_argument(std::string(name) + " has " + std::to_string(prompt.size()) +
                                    " tokens, which does not fit the context window of " +
                                    std::to_string(params_.n_ctx) + " tokens (leave room to generate)");
    }
    for (llama_token t : prompt) {
        model_->check_token(t);
    }
}

void engine::batch_add(llama_token token, llama_pos pos, bool in_p, bool in_b, bool logits) {
    const int32_t i = batch_.n_tokens;
    if (i >= batch_capacity_) {
        throw std::logic_error("batch overflow");
    }
    batch_.token[i]    = token;
    batch_.pos[i]      = pos;
    batch_.n_seq_id[i] = 0;
    if (in_p) {
        batch_.seq_id[i][batch_.n_seq_id[i]++] = STREAM_P;
    }
    if (in_b) {
        batch_.seq_id[i][batch_.n_seq_id[i]++] = STREAM_B;
    }
    batch_.logits[i] = logits;
    batch_.n_tokens++;
}

void engine::run_decode(const char * what) {
    const int32_t rc = llama_decode(ctx_, batch_);
    n_decode_calls_++;
    if (rc != 0) {
        // The cache may hold part of the batch now: forget it so the next
        // call starts from a known state instead of a corrupt one.
        llama_memory_clear(llama_get_memory(ctx_), true);
        cached_[0].clear();
        cached_[1].clear();
        out_idx_ = {-1, -1};
        throw std::runtime_error(std::string("llama_decode failed during ") + what + " (code " + std::to_string(rc) +
                                 (rc == 1 ? ": no room in the KV cache)" : ")"));
    }
}

const float * engine::logits_at(int32_t batch_index) const {
    const float * logits = llama_get_logits_ith(ctx_, batch_index);
    if (logits == nullptr) {
        throw std::runtime_error("llama.cpp returned no logits for batch index " + std::to_string(batch_index));
    }
    return logits;
}

prefill_stats engine::prefill(const std::vector<llama_token> & prompt_p, const std::vector<llama_token> & prompt_b,
                              int32_t n_tail_p, int32_t n_tail_b, bool with_base) {
    require_open();
    check_prompt(prompt_p, "prompt");
    check_prompt(prompt_b, "base_prompt");
    if (!with_base) {
        return prefill_prompt_only(prompt_p);
    }
    const std::array<const std::vector<llama_token> *, 2> prompts = {&prompt_p, &prompt_b};
    const std::array<int32_t, 2> n_tail = {n_tail_p, n_tail_b};
    chain_.reset();

    // 1. keep what the cache already holds of each prompt; at least the
    //    positions whose logits are wanted are decoded again
    llama_memory_t mem = llama_get_memory(ctx_);
    std::array<int32_t, 2> keep{};
    prefill_stats stats;
    for (int s = 0; s < 2; ++s) {
        const int32_t n = (int32_t) prompts[s]->size();
        keep[s] = std::min<int32_t>((int32_t) common_prefix(cached_[s], *prompts[s]), n - n_tail[s]);
        if (!llama_memory_seq_rm(mem, s, keep[s], -1)) {
            llama_memory_seq_rm(mem, s, -1, -1);
            keep[s] = 0;
        }
        cached_[s].resize(keep[s]);
        stats.reused[s]  = keep[s];
        stats.decoded[s] = n - keep[s];
    }

    // 2. where the prompts agree from the start, a stream may take from the
    //    other's cache what it lacks (llama.cpp adds a sequence id to the
    //    cells; nothing is decoded)
    const int32_t n_common = params_.two_call ? 0 : (int32_t) common_prefix(prompt_p, prompt_b);
    for (int s = 0; s < 2; ++s) {
        const int other = 1 - s;
        // never past the positions whose logits this call must compute
        const int32_t upto = std::min({keep[other], n_common, (int32_t) prompts[s]->size() - n_tail[s]});
        if (keep[s] < upto) {
            llama_memory_seq_cp(mem, other, s, keep[s], upto);
            stats.reused[s] = upto;
            stats.decoded[s] -= upto - keep[s];
            keep[s] = upto;
            cached_[s].assign(prompts[s]->begin(), prompts[s]->begin() + upto);
        }
    }

    // 3. one batch: positions both streams need and agree on from the start
    //    are added once with both sequence ids (llama.cpp requires the two
    //    sequences to hold the same positions then), then each stream's tail
    const int32_t shared_begin = std::max(keep[0], keep[1]); // after step 2, unequal keeps leave no room to share
    const int32_t shared_end   = std::max(shared_begin, n_common);
    const auto wants_logits = [&](int s, int32_t pos) {
        return pos >= (int32_t) prompts[s]->size() - n_tail[s];
    };
    tail_rows_[0].assign(n_tail_p, -1);
    tail_rows_[1].assign(n_tail_b, -1);
    const auto note_row = [&](int s, int32_t pos) {
        const int32_t first_tail = (int32_t) prompts[s]->size() - n_tail[s];
        if (pos >= first_tail) {
            tail_rows_[s][pos - first_tail] = batch_.n_tokens - 1;
        }
    };

    const auto add_own = [&](int s, int32_t from, int32_t to) {
        for (int32_t pos = from; pos < to; ++pos) {
            batch_add((*prompts[s])[pos], pos, s == STREAM_P, s == STREAM_B, wants_logits(s, pos));
            note_row(s, pos);
        }
    };
    const int32_t n_p = (int32_t) prompt_p.size();
    const int32_t n_b = (int32_t) prompt_b.size();

    batch_.n_tokens = 0;
    if (params_.two_call) {
        // the baseline decodes each stream in its own call; P's logits must
        // be saved before B's call overwrites them
        add_own(STREAM_P, keep[0], n_p);
        run_decode("prefill of the prompt");
        std::memcpy(logits_p_copy_.data(), logits_at(tail_rows_[0].back()), sizeof(float) * n_vocab_);
        batch_.n_tokens = 0;
        add_own(STREAM_B, keep[1], n_b);
    } else {
        // within each sequence, positions go up through the batch
        add_own(STREAM_P, keep[0], std::min(shared_begin, n_p));
        add_own(STREAM_B, keep[1], std::min(shared_begin, n_b));
        for (int32_t pos = shared_begin; pos < shared_end; ++pos) {
            batch_add(prompt_p[pos], pos, true, true, wants_logits(0, pos) || wants_logits(1, pos));
            note_row(0, pos);
            note_row(1, pos);
            stats.shared++;
        }
        add_own(STREAM_P, std::max(keep[0], shared_end), n_p);
        add_own(STREAM_B, std::max(keep[1], shared_end), n_b);
    }
    if (batch_.n_tokens > 0) {
        run_decode("prefill");
    }

    cached_[0] = prompt_p;
    cached_[1] = prompt_b;
    out_idx_   = {tail_rows_[0].back(), tail_rows_[1].back()};
    identical_ = !params_.two_call && prompt_p == prompt_b;
    base_active_ = true;
    last_prefill_ = stats;
    return stats;
}

// With ratio 0 stream B's logits are never read (ALGORITHM.md: ordinary
// decoding of P with a top-p), so only P is decoded, one token per step as a
// plain llama.cpp context does. B's cache is left as it was.
prefill_stats engine::prefill_prompt_only(const std::vector<llama_token> & prompt_p) {
    llama_memory_t mem = llama_get_memory(ctx_);
    const int32_t n = (int32_t) prompt_p.size();
    int32_t keep = std::min<int32_t>((int32_t) common_prefix(cached_[0], prompt_p), n - 1);
    if (!llama_memory_seq_rm(mem, STREAM_P, keep, -1)) {
        llama_memory_seq_rm(mem, STREAM_P, -1, -1);
        keep = 0;
    }
    cached_[0].resize(keep);
    tail_rows_[0].assign(1, -1);
    tail_rows_[1].clear();
    batch_.n_tokens = 0;
    for (int32_t pos = keep; pos < n; ++pos) {
        batch_add(prompt_p[pos], pos, true, false, pos == n - 1);
    }
    run_decode("prefill");
    cached_[0]   = prompt_p;
    out_idx_     = {batch_.n_tokens - 1, -1};
    tail_rows_[0][0] = out_idx_[0];
    identical_   = false;
    base_active_ = false;
    prefill_stats stats;
    stats.reused[0]  = keep;
    stats.decoded[0] = n - keep;
    stats.reused[1]  = (int32_t) cached_[1].size();
    last_prefill_ = stats;
    return stats;
}

prefill_stats engine::start(const std::vector<llama_token> & prompt_p, const std::vector<llama_token> & prompt_b,
                            const sampling_params & params) {
    require_open();
    params.validate();
    auto chain = std::make_unique<sampler_chain>(params, model_->vocab());
    prefill_stats stats = prefill(prompt_p, prompt_b, 1, 1, params.ratio != 0.0f);
    chain_ = std::move(chain);
    return stats;
}

const float * engine::logits(int stream) const {
    require_open();
    if (stream != STREAM_P && stream != STREAM_B) {
        throw std::invalid_argument("stream must be 0 (P) or 1 (B)");
    }
    if (out_idx_[stream] < 0) {
        throw std::runtime_error("no logits yet: call start() first");
    }
    if (stream == STREAM_P && params_.two_call) {
        return logits_p_copy_.data();
    }
    return logits_at(out_idx_[stream]);
}

llama_token engine::sample() {
    require_open();
    if (!chain_ || out_idx_[0] < 0) {
        throw std::runtime_error("sample() called before start()");
    }
    return chain_->sample(logits(STREAM_P), base_active_ ? logits(STREAM_B) : nullptr);
}

bool engine::decode(llama_token token) {
    require_open();
    if (out_idx_[0] < 0) {
        throw std::runtime_error("decode() called before start()");
    }
    model_->check_token(token);
    if (n_past(STREAM_P) >= params_.n_ctx || (base_active_ && n_past(STREAM_B) >= params_.n_ctx)) {
        return false;
    }
    const llama_pos pos_p = n_past(STREAM_P);
    const llama_pos pos_b = n_past(STREAM_B);
    batch_.n_tokens = 0;
    if (!base_active_) {
        batch_add(token, pos_p, true, false, true);
        run_decode("decode");
        out_idx_ = {0, -1};
        cached_[0].push_back(token);
        return true;
    }
    if (params_.two_call) {
        batch_add(token, pos_p, true, false, true);
        run_decode("decode of the prompt stream");
        std::memcpy(logits_p_copy_.data(), logits_at(0), sizeof(float) * n_vocab_);
        batch_.n_tokens = 0;
        batch_add(token, pos_b, false, true, true);
        run_decode("decode of the base stream");
        out_idx_ = {0, 0};
    } else if (identical_) {
        batch_add(token, pos_p, true, true, true);
        run_decode("decode");
        out_idx_ = {0, 0};
    } else {
        batch_add(token, pos_p, true, false, true);
        batch_add(token, pos_b, false, true, true);
        run_decode("decode");
        out_idx_ = {0, 1};
    }
    cached_[0].push_back(token);
    cached_[1].push_back(token);
    return true;
}

void engine::eval_logits(const std::vector<llama_token> & prompt_p, const std::vector<llama_token> & prompt_b,
                         int32_t n_tail_p, int32_t n_tail_b, std::vector<float> & out_p, std::vector<float> & out_b) {
    require_open();
    if (params_.two_call) {
        throw std::logic_error("eval_logits is not available in two-call mode");
    }
    if (n_tail_p < 1 || n_tail_p > (int32_t) prompt_p.size() || n_tail_b < 1 || n_tail_b > (int32_t) prompt_b.size()) {
        throw std::invalid_argument("n_tail must be between 1 and the prompt length");
    }
    prefill(prompt_p, prompt_b, n_tail_p, n_tail_b, true);
    const std::array<std::vector<float> *, 2> outs = {&out_p, &out_b};
    for (int s = 0; s < 2; ++s) {
        outs[s]->resize(tail_rows_[s].size() * (size_t) n_vocab_);
        for (size_t r = 0; r < tail_rows_[s].size(); ++r) {
            std::memcpy(outs[s]->data() + r * n_vocab_, logits_at(tail_rows_[s][r]), sizeof(float) * n_vocab_);
        }
    }
}

void engine::decode_floor(llama_token token, int32_t n_steps) {
    require_open();
    model_->check_token(token);
    if (cached_[0].empty() || cached_[1].empty()) {
        throw std::runtime_error("decode_floor() needs a prefill first");
    }
    for (int32_t i = 0; i < n_steps; ++i) {
        if (n_past(STREAM_P) >= params_.n_ctx || n_past(STREAM_B) >= params_.n_ctx) {
            throw std::invalid_argument("decode_floor ran past the context window");
        }
        batch_.n_tokens = 0;
        batch_add(token, n_past(STREAM_P), true, false, true);
        batch_add(token, n_past(STREAM_B), false, true, true);
        run_decode("floor decode");
        cached_[0].push_back(token);
        cached_[1].push_back(token);
    }
    identical_ = false;
    out_idx_ = {0, 1};
}

} // namespace linalign
