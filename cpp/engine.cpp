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

    // Each stream gets its own KV buffer (kv_unified = false), laid out as in a
    // context of its own: cell i holds position i. llama.cpp's rounding
    // depends on the cell layout and on how many of a stream's tokens share a
    // matrix product, and on this layout each stream's logits are bit for bit
    // those of a separate context decoding the same tokens (tests hold the
    // engine to that). n_ctx cells per stream.
    // The two-call benchmark baseline keeps one unified cache instead: with
    // per-stream buffers its alternating one-stream calls ran at about half
    // the speed (H200: 158 against 295 tok/s; likely llama.cpp rebuilding
    // its graph whenever the stream changes), a cost foreign to the design
    // the baseline stands for.
    // A shared context (see aligner.py) keeps the Llama's own settings (cache
    // types, offload, RoPE, threads), so the Llama decodes on stream P exactly
    // as it did on a context of its own.
    llama_context_params cparams = params.base_cparams ? *params.base_cparams : llama_context_default_params();
    cparams.n_ctx      = 2 * (uint32_t) params.n_ctx;
    cparams.n_batch    = 2 * (uint32_t) params.n_ctx;
    cparams.n_seq_max  = 2;
    cparams.kv_unified = params.two_call;
    if (params.base_cparams == nullptr) {
        cparams.no_perf = true;
        cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    if (params.flash_attn) {
        cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    }
    if (params.n_threads > 0) {
        cparams.n_threads = params.n_threads;
    }
    if (params.n_threads_batch > 0) {
        cparams.n_threads_batch = params.n_threads_batch;
    } else if (params.base_cparams == nullptr) {
        cparams.n_threads_batch = cparams.n_threads;
    }

    ctx_ = llama_init_from_model(model_->get(), cparams);
    if (ctx_ == nullptr) {
        throw std::runtime_error("llama.cpp could not create a context (n_ctx " + std::to_string(params.n_ctx) +
                                 " per stream; out of memory?)");
    }
    batch_capacity_ = (int32_t) cparams.n_batch;
    batch_          = llama_batch_init(batch_capacity_, 0, 2);
    if (params.two_call) {
        logits_p_copy_.resize(n_vocab_);
    }
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
    forget();
}

void engine::forget() {
    require_open();
    cached_[0].clear();
    cached_[1].clear();
    out_idx_ = {-1, -1};
    p_evicted_ = false;
    chain_.reset();
}

void engine::evict_prompt_stream() {
    require_open();
    if (params_.two_call) {
        throw std::logic_error("a two-call engine does not share its context");
    }
    p_evicted_ = !cached_[0].empty();
}

// Decodes P's tokens again after a sharing Llama used its sequence, and B's
// last token (its cells are intact, the logits of the last decode are not),
// so that sample() and decode() go on as if nothing had happened. The
// sampler chain is kept.
void engine::restore_prompt_stream() {
    p_evicted_ = false;
    llama_memory_t mem = llama_get_memory(ctx_);
    llama_memory_seq_rm(mem, STREAM_P, -1, -1);
    const int32_t n_p = n_past(STREAM_P);
    batch_.n_tokens = 0;
    for (int32_t pos = 0; pos < n_p; ++pos) {
        batch_add(cached_[0][pos], pos, STREAM_P, pos == n_p - 1);
    }
    int32_t out_b = identical_ ? n_p - 1 : -1;
    if (base_active_ && !identical_ && n_past(STREAM_B) > 0) {
        const int32_t last_b = n_past(STREAM_B) - 1;
        llama_memory_seq_rm(mem, STREAM_B, last_b, -1);
        out_b = batch_.n_tokens;
        batch_add(cached_[1][last_b], last_b, STREAM_B, true);
    }
    run_decode("decode of the prompt stream again, after the sharing Llama's turn");
    out_idx_ = {n_p - 1, out_b};
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

void engine::batch_add(llama_token token, llama_pos pos, int stream, bool logits) {
    const int32_t i = batch_.n_tokens;
    if (i >= batch_capacity_) {
        throw std::logic_error("batch overflow");
    }
    batch_.token[i]     = token;
    batch_.pos[i]       = pos;
    batch_.n_seq_id[i]  = 1;
    batch_.seq_id[i][0] = stream;
    batch_.logits[i]    = logits;
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

// A shared prompt prefix is handed from one stream to the other by copying
// the source stream's whole KV buffer (a non-unified cache cannot copy part
// of one, nor hold a token in two streams). That costs a pass over the buffer
// and, when the prefix is not cached yet, a llama_decode of its own, so it is
// done only for prefixes at least this long; shorter ones are decoded twice
// in the one prefill batch. Measured on 2 CPU cores (135M model, 2048 cells
// per stream), prefill of both prompts, decoded twice -> copied: 3 shared
// tokens 76 -> 83 ms, 8: 104 -> 92 ms, 16: 176 -> 114 ms, 64: 428 -> 251 ms.
static constexpr int32_t MIN_SHARED_TO_COPY = 8;

prefill_stats engine::prefill(const std::vector<llama_token> & prompt_p, const std::vector<llama_token> & prompt_b,
                              int32_t n_tail_p, int32_t n_tail_b, bool with_base) {
    require_open();
    check_prompt(prompt_p, "prompt");
    check_prompt(prompt_b, "base_prompt");
    if (!with_base) {
        return prefill_prompt_only(prompt_p, false);
    }
    if (prompt_p == prompt_b && n_tail_p == n_tail_b && !params_.two_call) {
        return prefill_prompt_only(prompt_p, true, n_tail_p);
    }
    const std::array<const std::vector<llama_token> *, 2> prompts = {&prompt_p, &prompt_b};
    const std::array<int32_t, 2> n_tail = {n_tail_p, n_tail_b};
    const std::array<int32_t, 2> n_prompt = {(int32_t) prompt_p.size(), (int32_t) prompt_b.size()};
    chain_.reset();
    out_idx_ = {-1, -1};

    // 1. keep what each stream's cache already holds of its prompt; at least
    //    the positions whose logits are wanted are decoded again
    std::array<int32_t, 2> keep{};
    prefill_stats stats;
    for (int s = 0; s < 2; ++s) {
        keep[s] = keep_prefix(s, std::min<int32_t>((int32_t) common_prefix(cached_[s], *prompts[s]),
                                                   n_prompt[s] - n_tail[s]));
        stats.reused[s]  = keep[s];
        stats.decoded[s] = n_prompt[s] - keep[s];
    }

    // 2. where the prompts agree from the start, the stream with less of
    //    that part cached takes it from the other; what neither holds yet is
    //    decoded first, once, in the stream that will be copied
    const int32_t n_common = params_.two_call ? 0 : (int32_t) common_prefix(prompt_p, prompt_b);
    const int32_t upto = std::min({n_common, n_prompt[0] - n_tail[0], n_prompt[1] - n_tail[1]});
    const int src = keep[STREAM_P] >= keep[STREAM_B] ? STREAM_P : STREAM_B;
    const int dst = 1 - src;
    if (upto - keep[dst] >= MIN_SHARED_TO_COPY) {
        const int32_t from_cache = std::min(keep[src], upto);
        batch_.n_tokens = 0;
        for (int32_t pos = keep[src]; pos < upto; ++pos) {
            batch_add((*prompts[src])[pos], pos, src, false);
        }
        if (batch_.n_tokens > 0) {
            run_decode("prefill of the shared prefix");
            cached_[src].assign(prompts[src]->begin(), prompts[src]->begin() + upto);
            keep[src] = upto;
        }
        // the whole buffer; llama.cpp carries the copy out at the next decode
        llama_memory_seq_cp(llama_get_memory(ctx_), src, dst, -1, -1);
        cached_[dst] = cached_[src];
        keep[dst] = keep_prefix(dst, upto);
        stats.shared       = upto - from_cache;
        stats.reused[dst]  = from_cache;
        stats.decoded[dst] = n_prompt[dst] - from_cache;
    }

    // 3. one batch with what is left of both prompts
    batch_.n_tokens = 0;
    for (int s = 0; s < 2; ++s) {
        tail_rows_[s].assign(n_tail[s], -1);
        if (params_.two_call && s == STREAM_B) {
            // the baseline decodes each stream in its own call; P's logits
            // must be saved before B's call overwrites them
            run_decode("prefill of the prompt");
            std::memcpy(logits_p_copy_.data(), logits_at(tail_rows_[0].back()), sizeof(float) * n_vocab_);
            batch_.n_tokens = 0;
        }
        const int32_t first_tail = n_prompt[s] - n_tail[s];
        for (int32_t pos = keep[s]; pos < n_prompt[s]; ++pos) {
            if (pos >= first_tail) {
                tail_rows_[s][pos - first_tail] = batch_.n_tokens;
            }
            batch_add((*prompts[s])[pos], pos, s, pos >= first_tail);
        }
    }
    run_decode("prefill");

    cached_[0]   = prompt_p;
    cached_[1]   = prompt_b;
    out_idx_     = {tail_rows_[0].back(), tail_rows_[1].back()};
    identical_   = false;
    base_active_ = true;
    last_prefill_ = stats;
    return stats;
}

// Drops a stream's cache past its first n positions (all of it if llama.cpp
// cannot cut there).
int32_t engine::keep_prefix(int stream, int32_t n) {
    llama_memory_t mem = llama_get_memory(ctx_);
    // What the engine recorded must still be what the cache holds: a Llama
    // sharing the context (shared_context.py) may have decoded since, and
    // after evict_prompt_stream() stream P's cells are the Llama's.
    const bool evicted = stream == STREAM_P && p_evicted_;
    if (evicted || llama_memory_seq_pos_max(mem, stream) != (llama_pos) cached_[stream].size() - 1) {
        cached_[stream].clear();
        n = 0;
    }
    if (evicted) {
        p_evicted_ = false;
    }
    if (!llama_memory_seq_rm(mem, stream, n, -1)) {
        llama_memory_seq_rm(mem, stream, -1, -1);
        n = 0;
    }
    cached_[stream].resize(std::min<size_t>(cached_[stream].size(), n));
    return n;
}

// With ratio 0 stream B's logits are never read (ALGORITHM.md: ordinary
// decoding of P with a top-p), and with identical prompts B's logits are P's:
// either way only P is decoded, one token per step as a plain llama.cpp
// context does. B's cache is left as it was.
prefill_stats engine::prefill_prompt_only(const std::vector<llama_token> & prompt_p, bool identical, int32_t n_tail) {
    const int32_t n = (int32_t) prompt_p.size();
    chain_.reset();
    out_idx_ = {-1, -1};
    const int32_t keep = keep_prefix(STREAM_P, std::min<int32_t>((int32_t) common_prefix(cached_[0], prompt_p), n - n_tail));
    tail_rows_[0].assign(n_tail, -1);
    batch_.n_tokens = 0;
    for (int32_t pos = keep; pos < n; ++pos) {
        if (pos >= n - n_tail) {
            tail_rows_[0][pos - (n - n_tail)] = batch_.n_tokens;
        }
        batch_add(prompt_p[pos], pos, STREAM_P, pos >= n - n_tail);
    }
    run_decode("prefill");
    cached_[0]   = prompt_p;
    tail_rows_[1] = identical ? tail_rows_[0] : std::vector<int32_t>{};
    out_idx_     = {tail_rows_[0].back(), identical ? tail_rows_[0].back() : -1};
    identical_   = identical;
    base_active_ = false;
    prefill_stats stats;
    stats.reused[0]  = keep;
    stats.decoded[0] = n - keep;
    if (identical) {  // B is P: every token decoded counts for both
        stats.reused[1]  = keep;
        stats.decoded[1] = n - keep;
        stats.shared     = n - keep;
    } else {
        stats.reused[1] = (int32_t) cached_[1].size();
    }
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

const float * engine::logits(int stream) {
    require_open();
    if (stream != STREAM_P && stream != STREAM_B) {
        throw std::invalid_argument("stream must be 0 (P) or 1 (B)");
    }
    if (out_idx_[stream] < 0) {
        throw std::runtime_error("no logits yet: call start() first");
    }
    if (p_evicted_) {
        restore_prompt_stream();
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
    if (p_evicted_) {
        restore_prompt_stream();
    }
    if (n_past(STREAM_P) >= params_.n_ctx || (base_active_ && n_past(STREAM_B) >= params_.n_ctx)) {
        return false;
    }
    batch_.n_tokens = 0;
    if (!base_active_) {
        batch_add(token, n_past(STREAM_P), STREAM_P, true);
        run_decode("decode");
        out_idx_ = {0, identical_ ? 0 : -1};
        cached_[0].push_back(token);
        return true;
    }
    if (params_.two_call) {
        batch_add(token, n_past(STREAM_P), STREAM_P, true);
        run_decode("decode of the prompt stream");
        std::memcpy(logits_p_copy_.data(), logits_at(0), sizeof(float) * n_vocab_);
        batch_.n_tokens = 0;
        batch_add(token, n_past(STREAM_B), STREAM_B, true);
        run_decode("decode of the base stream");
        out_idx_ = {0, 0};
    } else {
        batch_add(token, n_past(STREAM_P), STREAM_P, true);
        batch_add(token, n_past(STREAM_B), STREAM_B, true);
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
    if (p_evicted_) {
        restore_prompt_stream();
    }
    for (int32_t i = 0; i < n_steps; ++i) {
        if (n_past(STREAM_P) >= params_.n_ctx || n_past(STREAM_B) >= params_.n_ctx) {
            throw std::invalid_argument("decode_floor ran past the context window");
        }
        batch_.n_tokens = 0;
        batch_add(token, n_past(STREAM_P), STREAM_P, true);
        batch_add(token, n_past(STREAM_B), STREAM_B, true);
        run_decode("floor decode");
        cached_[0].push_back(token);
        cached_[1].push_back(token);
    }
    identical_   = false;
    base_active_ = true;
    out_idx_     = {0, 1};
}

} // namespace linalign
