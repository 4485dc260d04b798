// engine: the slot pool, its batched step and its prompt cache over one
// llama_context (see engine.h).
#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>

namespace linalign {

// Threads that may sample the slots of a step at once: the decode's own
// count, where llama.cpp's CPU backend runs on OpenMP as linalign does (a
// team of its own would add threads that spin beside the decode's); else 1.
static int32_t sample_threads(int32_t n_decode_threads) {
#ifdef LINALIGN_OPENMP
    const char * info = llama_print_system_info();
    if (info != nullptr && std::strstr(info, "OPENMP = 1") != nullptr) {
        return std::max<int32_t>(1, n_decode_threads);
    }
#endif
    (void) n_decode_threads;
    return 1;
}

// The most slots one context may hold, and the most sequences (slots x
// streams), within llama.cpp's LLAMA_MAX_SEQ.
static constexpr int32_t MAX_SLOTS = 64;
static constexpr int32_t MAX_SEQUENCES = 256;
// A prefix B shares with P is taken from P's cells when at least this long
// and B's own cache lacks it. With per-stream buffers (kv_unified false) the
// copy is of P's whole buffer and costs a pass over it, so shorter prefixes
// are decoded again in B (measured on 2 CPU cores, 135M model, 2048 cells
// per stream, prefill of both prompts decoded twice -> copied: 3 shared
// tokens 76 -> 83 ms, 8: 104 -> 92 ms, 16: 176 -> 114 ms, 64: 428 -> 251 ms).
// With a unified cache the cells are shared, not copied, for any length.
static constexpr int32_t MIN_SHARED_TO_COPY = 8;

// The most KV cells of the one context, checked in 64-bit arithmetic before
// any size reaches llama.cpp's 32-bit fields.
static constexpr int64_t MAX_CELLS = int64_t(1) << 28;

// Whether a sequence's memory holds what decoding it on from position n
// reads, positions 0..n-1 being its prefix. llama.cpp's memories differ: a
// KV cache holds every position; a sliding-window one may drop those that
// fell out of the window (llama.cpp writes new tokens over them, in a unified
// pool even with swa_full), so it must still hold the window before n; a
// recurrent state holds only its last position, n - 1. llama-server checks
// seq_pos_min against n_swa alike. A hybrid model's pos_min is the larger of
// its parts', its recurrent part's, so one with sliding-window layers as well
// is always decoded again: slower, never wrong.
bool memory_holds_prefix(llama_context * ctx, llama_seq_id seq, int32_t n) {
    if (n == 0) {
        return true;
    }
    const llama_model * model = llama_get_model(ctx);
    llama_memory_t mem = llama_get_memory(ctx);
    const int32_t n_swa = llama_model_n_swa(model);
    const bool one_state = llama_model_is_recurrent(model) || llama_model_is_hybrid(model);
    const llama_pos oldest_read = n_swa > 0 ? std::max(0, n - n_swa) : one_state ? n - 1 : 0;
    return llama_memory_seq_pos_max(mem, seq) == n - 1 && llama_memory_seq_pos_min(mem, seq) <= oldest_read;
}

// llama.cpp's eval callback, asked about every node of every graph it
// computes: counts the graphs by their logits node (every model's graph
// names it so) and never asks for data, so each graph still runs in one go.
static bool count_forward_passes(ggml_tensor * t, bool ask, void * user_data) {
    if (ask && std::strcmp(ggml_get_name(t), "result_output") == 0) {
        ++*static_cast<std::atomic<int64_t> *>(user_data);
    }
    return false;
}

engine::engine(std::shared_ptr<model> mdl, const engine_params & params) : model_(std::move(mdl)), params_(params) {
    if (!model_ || model_->closed()) {
        throw std::invalid_argument("engine needs an open model");
    }
    if (params.n_ctx < 8) {
        throw std::invalid_argument("n_ctx must be at least 8, got " + std::to_string(params.n_ctx));
    }
    if (params.n_slots < 1 || params.n_slots > MAX_SLOTS) {
        throw std::invalid_argument("n_slots must be in [1, " + std::to_string(MAX_SLOTS) + "], got " +
                                    std::to_string(params.n_slots));
    }
    if (params.n_streams < MIN_STREAMS || params.n_streams > MAX_STREAMS) {
        throw std::invalid_argument("n_streams must be in [" + std::to_string(MIN_STREAMS) + ", " +
                                    std::to_string(MAX_STREAMS) + "] (P, B and one per further principle), got " +
                                    std::to_string(params.n_streams));
    }
    if (params.n_streams * params.n_slots > MAX_SEQUENCES) {
        throw std::invalid_argument(std::to_string(params.n_slots) + " slots x " + std::to_string(params.n_streams) +
                                    " streams is more than llama.cpp's " + std::to_string(MAX_SEQUENCES) + " sequences");
    }
    const int64_t n_most = (int64_t) params.n_ctx * params.n_streams * params.n_slots;
    if (params.n_cells != 0 && (!params.kv_unified || params.n_cells < params.n_ctx || params.n_cells > n_most)) {
        throw std::invalid_argument("kv_cells (the unified KV pool's cells) needs kv_unified and must be in [n_ctx, n_ctx x " +
                                    std::to_string(params.n_streams) + " streams x " + std::to_string(params.n_slots) +
                                    " slots] = [" + std::to_string(params.n_ctx) + ", " + std::to_string(n_most) +
                                    "], got " + std::to_string(params.n_cells));
    }
    // the pool's default: what plain decoding allocates, n_ctx per slot (engine.h, engine_params::n_cells)
    const int64_t n_cells = params.n_cells != 0 ? params.n_cells
                          : params.kv_unified ? (int64_t) params.n_ctx * params.n_slots : n_most;
    if (n_cells > MAX_CELLS) {
        throw std::invalid_argument("n_ctx " + std::to_string(params.n_ctx) + " x " + std::to_string(params.n_streams) +
                                    " streams x " + std::to_string(params.n_slots) + " slots is " +
                                    std::to_string(n_cells) + " KV cells, more than " + std::to_string(MAX_CELLS));
    }
    // every running stream's token must fit one step, with room for a prefill chunk
    const int32_t min_batch = params.n_streams * params.n_slots;
    if (params.n_batch < min_batch || params.n_batch > 65536) {
        throw std::invalid_argument("n_batch must be in [" + std::to_string(min_batch) + ", 65536] for " +
                                    std::to_string(params.n_slots) + " slots, got " + std::to_string(params.n_batch));
    }
    if (params.reserve_tokens < 0 || params.reserve_tokens > params.n_ctx) {
        throw std::invalid_argument("kv_reserve must be in [0, n_ctx = " + std::to_string(params.n_ctx) + "], got " +
                                    std::to_string(params.reserve_tokens));
    }
    if (params.n_threads < 0 || params.n_threads_batch < 0) {
        throw std::invalid_argument("n_threads must be >= 0");
    }
    if (params.flash_attn != LLAMA_FLASH_ATTN_TYPE_AUTO && params.flash_attn != LLAMA_FLASH_ATTN_TYPE_DISABLED &&
        params.flash_attn != LLAMA_FLASH_ATTN_TYPE_ENABLED) {
        throw std::invalid_argument("flash_attn must be -1 (auto), 0 (off) or 1 (on), got " +
                                    std::to_string(params.flash_attn));
    }
    n_vocab_ = model_->n_vocab();

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx      = (uint32_t) n_cells;
    // n_ubatch = n_batch: a step's one llama_decode is one forward pass
    // where llama.cpp does not split the batch (see n_forward_passes)
    cparams.n_batch    = (uint32_t) params.n_batch;
    cparams.n_ubatch   = (uint32_t) params.n_batch;
    cparams.n_seq_max  = (uint32_t) (params.n_streams * params.n_slots);
    cparams.kv_unified = params.kv_unified;
    // Sliding-window layers (Gemma 2/3) keep every cell, as full attention
    // does (llama.cpp's default; said here because the prompt cache rests on
    // it): a cache cut back by more than a batch still holds the window
    // before the cut, a stream's cells sit where a context of its own puts
    // them, and llama.h warns that window-sized caches can be slow with
    // several sequences. The price is memory: those layers hold n_ctx cells
    // per stream, not the window and a batch (docs/serving.md). Cells
    // llama.cpp drops anyway are found by keep_prefix.
    cparams.swa_full   = true;
    cparams.no_perf    = true;
    cparams.flash_attn_type = (enum llama_flash_attn_type) params.flash_attn;
    if (params.n_threads > 0) {
        cparams.n_threads = params.n_threads;
    }
    cparams.n_threads_batch = params.n_threads_batch > 0 ? params.n_threads_batch : cparams.n_threads;
    if (params.count_passes) {
        cparams.cb_eval           = count_forward_passes;
        cparams.cb_eval_user_data = &n_forward_passes_;
    }

    kv_type_k_ = (int32_t) cparams.type_k;
    kv_type_v_ = (int32_t) cparams.type_v;
    ctx_.reset(llama_init_from_model(model_->get(), cparams));
    if (!ctx_) {
        throw std::runtime_error("llama.cpp could not create a context (" + std::to_string(n_cells) +
                                 " KV cells; out of memory?)");
    }
    // what llama.cpp allocated: it rounds the context up (to 256 cells), and
    // takes no batch larger than it (a small pool makes the step's budget less)
    n_cells_total_ = (int64_t) llama_n_ctx(ctx_.get());
    params_.n_batch = std::min<int32_t>(params_.n_batch, (int32_t) llama_n_batch(ctx_.get()));
    n_sample_threads_ = sample_threads(llama_n_threads(ctx_.get()));
    batch_ = batch_owner(params_.n_batch);
    slots_.resize(params.n_slots);
    for (int32_t i = 0; i < params.n_slots; ++i) {
        slots_[i].streams.resize(params.n_streams);
        for (int32_t s = 0; s < params.n_streams; ++s) {
            slots_[i].streams[s].seq = i * params.n_streams + s;
        }
    }
}

engine::~engine() { close(); }

void engine::close() {
    slots_.clear();
    batch_ = batch_owner();
    ctx_.reset();
    model_.reset();
}

void engine::require_open() const {
    if (!ctx_) {
        throw std::runtime_error("engine is closed");
    }
}

const engine::slot & engine::slot_at(int32_t i) const {
    require_open();
    if (i < 0 || i >= (int32_t) slots_.size()) {
        throw std::invalid_argument("slot " + std::to_string(i) + " out of range [0, " + std::to_string(slots_.size()) + ")");
    }
    return slots_[i];
}

int32_t engine::check_stream(int32_t stream) const {
    if (stream < 0 || stream >= params_.n_streams) {
        throw std::invalid_argument("stream must be 0 (P), 1 (B) or a further principled stream below " +
                                    std::to_string(params_.n_streams) + ", got " + std::to_string(stream));
    }
    return stream;
}

int32_t engine::n_busy() const {
    require_open();
    return (int32_t) std::count_if(slots_.begin(), slots_.end(), [](const slot & s) { return s.state != slot_state::free; });
}

void engine::check_prompt(const std::vector<llama_token> & prompt, const char * name) const {
    if (prompt.empty()) {
        throw std::invalid_argument(std::string(name) + " is empty: it needs at least one token");
    }
    if ((int64_t) prompt.size() >= params_.n_ctx) {
        throw std::invalid_argument(std::string(name) + " has " + std::to_string(prompt.size()) +
                                    " tokens, which does not fit the context window of " +
                                    std::to_string(params_.n_ctx) + " tokens (leave room to generate)");
    }
    for (llama_token t : prompt) {
        model_->check_token(t);
    }
}

int32_t engine::pick_slot(const prompt_list & prompts) const {
    require_open();
    if (prompts.size() > (size_t) params_.n_streams) {
        throw std::invalid_argument(std::to_string(prompts.size()) + " prompts, but a slot holds " +
                                    std::to_string(params_.n_streams) + " streams");
    }
    // runs of busy slots a free slot would make: with a KV buffer per stream
    // each run is a forward pass of its own (GAP_COST_TOKENS)
    const auto busy = [this](int32_t i) {
        return i >= 0 && i < (int32_t) slots_.size() && slots_[i].state != slot_state::free;
    };
    int32_t best = -1;
    int64_t best_score = 0;
    for (int32_t i = 0; i < (int32_t) slots_.size(); ++i) {
        const slot & sl = slots_[i];
        if (sl.state != slot_state::free) {
            continue;
        }
        int64_t score = 0;
        for (size_t s = 0; s < prompts.size(); ++s) {
            score += (int64_t) common_prefix(sl.streams[s].cached, prompts[s]);
        }
        if (!params_.kv_unified) {
            // taking i makes a new run (no busy neighbour), lengthens one (one)
            // or joins two (two); with none busy every slot is a new run alike
            const int64_t new_runs = 1 - (int64_t) busy(i - 1) - (int64_t) busy(i + 1);
            score -= GAP_COST_TOKENS * params_.n_streams * new_runs;
        }
        if (best < 0 || score > best_score || (score == best_score && sl.last_used < slots_[best].last_used)) {
            best = i;
            best_score = score;
        }
    }
    return best;
}

// Drops a stream's cache past its first n positions. What the engine recorded
// must still be what the cache holds (a failed decode clears everything), and
// the memory must be able to drop the rest and still hold what the next
// position reads (memory_holds_prefix); otherwise the stream starts empty and
// decodes its prompt again.
int32_t engine::keep_prefix(stream & st, int32_t n) {
    llama_memory_t mem = llama_get_memory(ctx_.get());
    if (llama_memory_seq_pos_max(mem, st.seq) != (llama_pos) st.cached.size() - 1) {
        st.cached.clear();
        n = 0;
    }
    // seq_rm fails where a recurrent state would have to be cut back
    if (!llama_memory_seq_rm(mem, st.seq, n, -1) || !memory_holds_prefix(ctx_.get(), st.seq, n)) {
        llama_memory_seq_rm(mem, st.seq, -1, -1);
        n = 0;
    }
    st.cached.resize(std::min<size_t>(st.cached.size(), n));
    sync_cells(st);
    return n;
}

// A running slot whose context is full (or that, alone, filled the pool):
// it puts nothing in the batch, and its caller finishes it.
bool engine::at_end(const slot & sl) const {
    bool full = sl.pool_full;
    for (int32_t s = 0; s < sl.n_active; ++s) {
        full = full || (int32_t) sl.streams[s].cached.size() >= params_.n_ctx;
    }
    return full;
}

int32_t engine::active_streams(const prompt_list & prompts, const sampling_params & params) const {
    const bool composed = prompts.size() > 2;
    const bool identical = !composed && prompts[STREAM_P] == prompts[STREAM_B];
    const bool steers = params.ratio != 0.0f || params.auto_ratio;
    return composed ? (int32_t) prompts.size() : (steers && !identical) ? 2 : 1;
}

prefill_stats engine::start(int32_t slot_index, const prompt_list & prompts, const sampling_params & params,
                            bool cache_prompt, int32_t max_tokens, const std::vector<std::string> & stops) {
    slot & sl = slot_at(slot_index);
    if (sl.state != slot_state::free) {
        throw std::invalid_argument("slot " + std::to_string(slot_index) + " is busy");
    }
    params.validate();
    const size_t n_prompts = 2 + params.extra_ratios.size();
    if (prompts.size() != n_prompts) {
        throw std::invalid_argument("expected " + std::to_string(n_prompts) + " prompts (P, B and one per extra ratio), got " +
                                    std::to_string(prompts.size()));
    }
    if (n_prompts > (size_t) params_.n_streams) {
        throw std::invalid_argument(std::to_string(params.extra_ratios.size() + 1) + " principles need " +
                                    std::to_string(n_prompts) + " streams, but this engine's slots hold " +
                                    std::to_string(params_.n_streams));
    }
    for (size_t s = 0; s < n_prompts; ++s) {
        check_prompt(prompts[s], s == STREAM_P ? "prompt" : s == STREAM_B ? "base_prompt" : "principled prompt");
    }
    check_fits(prompts, params);
    auto chain = std::make_unique<sampler_chain>(params, model_->vocab());
    // before the cache is cut to the prefixes kept: room_for plans the same cut
    const bool room = room_for(slot_index, prompts, params, cache_prompt, max_tokens);

    const int32_t n_active = active_streams(prompts, params);
    const int32_t reserve_tokens = std::min(max_tokens > 0 ? max_tokens : params_.n_ctx, params_.reserve_tokens);
    sl.n_active = n_active;
    sl.b_is_p   = n_prompts == 2 && prompts[STREAM_P] == prompts[STREAM_B];
    sl.reserve  = 0;
    for (int32_t s = 0; s < n_active; ++s) {
        stream & st = sl.streams[s];
        st.prompt = prompts[s];
        st.row = -1;
        st.copy_src = -1;
        st.copy_upto = 0;
        const int32_t n = (int32_t) st.prompt.size();
        // at least the last prompt token is decoded again: its logits are wanted
        keep_prefix(st, cache_prompt ? std::min<int32_t>((int32_t) common_prefix(st.cached, st.prompt), n - 1) : 0);
        sl.reserve += std::min(reserve_tokens, params_.n_ctx - n);
    }
    sl.chain       = std::move(chain);
    sl.n_logprobs  = params.n_logprobs;
    sl.top_p       = params.top_p;
    sl.temperature = params.temperature;
    sl.next_token  = -1;
    sl.n_sampled   = 0;
    sl.max_tokens  = max_tokens;
    sl.stops.clear();
    std::copy_if(stops.begin(), stops.end(), std::back_inserter(sl.stops), [](const std::string & s) { return !s.empty(); });
    sl.recent.clear();
    sl.n_preempted = 0;
    sl.pool_full   = false;
    sl.started     = ++clock_;
    sl.last_used   = sl.started;
    if (room) {
        begin_prefill(sl);
    } else {
        sl.state = slot_state::waiting;  // step() starts it when the pool has room (start_waiting)
        begin_prefill_stats(sl);
    }
    publish_cells();
    return sl.stats;
}

// A request's stats are those of its first prefill: what each stream found
// in its cache, and (begin_prefill) what it takes from another's cells.
void engine::begin_prefill_stats(slot & sl) {
    sl.stats = prefill_stats();
    sl.stats.reused.assign(params_.n_streams, 0);
    sl.stats.decoded.assign(params_.n_streams, 0);
    sl.stats.cached.assign(params_.n_streams, 0);
    for (int32_t s = 0; s < sl.n_active; ++s) {
        const stream & st = sl.streams[s];
        sl.stats.reused[s]  = (int32_t) st.cached.size();
        sl.stats.decoded[s] = (int32_t) (st.prompt.size() - st.cached.size());
        sl.stats.cached[s]  = sl.stats.reused[s];
    }
}

// Which stream takes which prefix from another's cells, given what each
// holds: every other stream takes the part of its prompt that P's prompt
// shares, and that its own cache lacks, from P's cells once P holds it.
// With two streams the one that already holds more of the shared part
// gives it to the other: when the principle comes after the history
// (principle_position "end"), last turn's tokens are in B's cache as B
// had them, not in P's, whose principle sat where the new turn goes.
std::vector<engine::shared_prefix> engine::plan_shared_prefixes(const prompt_refs & prompts,
                                                                const std::vector<int32_t> & n_cached,
                                                                const std::vector<int32_t> & keep_from) const {
    // a position whose logits are wanted is decoded in its own stream, never taken:
    // the last of each prompt, or (an evaluation) its tail from keep_from on
    const auto first_kept = [&](int32_t s) {
        const int32_t last = (int32_t) prompts[s]->size() - 1;
        return s < (int32_t) keep_from.size() && keep_from[s] >= 0 ? std::min(keep_from[s], last) : last;
    };
    const int32_t min_shared = params_.kv_unified ? 1 : MIN_SHARED_TO_COPY;
    const int32_t n_active = (int32_t) prompts.size();
    const std::vector<llama_token> & prompt_p = *prompts[STREAM_P];
    std::vector<shared_prefix> plan;
    for (int32_t s = 1; s < n_active; ++s) {
        const std::vector<llama_token> & prompt_o = *prompts[s];
        const int32_t upto = std::min({(int32_t) common_prefix(prompt_p, prompt_o), first_kept(STREAM_P), first_kept(s)});
        const int32_t o_has = std::min(n_cached[s], upto);
        const int32_t p_has = std::min(n_cached[STREAM_P], upto);
        shared_prefix sp;
        sp.taker = s;
        sp.donor = STREAM_P;
        sp.donor_has = p_has;
        if (n_active == 2 && o_has > p_has) {
            sp.taker = STREAM_P;
            sp.donor = s;
            sp.donor_has = o_has;
        }
        sp.from = n_cached[sp.taker];
        sp.upto = upto;
        if (upto - sp.from >= min_shared) {
            plan.push_back(sp);
        }
    }
    return plan;
}

// Queues a slot's prompts (its cache cut to the prefixes it keeps) for
// prefill: a started request, or a waiting one that now has room.
void engine::begin_prefill(slot & sl) {
    const bool first = sl.n_preempted == 0;
    if (first) {
        begin_prefill_stats(sl);
    }
    prompt_refs prompts;
    std::vector<int32_t> n_cached, keep_from;
    for (int32_t s = 0; s < sl.n_active; ++s) {
        prompts.push_back(&sl.streams[s].prompt);
        n_cached.push_back((int32_t) sl.streams[s].cached.size());
        keep_from.push_back(sl.streams[s].keep_from);
    }
    for (const shared_prefix & sp : plan_shared_prefixes(prompts, n_cached, keep_from)) {
        stream & taker = sl.streams[sp.taker];
        taker.copy_src  = sp.donor;
        taker.copy_upto = sp.upto;
        if (first) {
            sl.stats.shared += sp.upto - sp.from;
            sl.stats.decoded[sp.taker] -= sp.upto - sp.from;
            sl.stats.cached[sp.taker] += std::max(0, sp.donor_has - sp.from);
        }
    }
    sl.state = slot_state::prefill;
}

void engine::finish(int32_t slot_index) {
    slot & sl = slot_at(slot_index);
    sl.state      = slot_state::free;
    sl.chain.reset();
    sl.next_token = -1;
    sl.n_active   = 0;
    sl.reserve    = 0;
    sl.pool_full  = false;
    for (stream & st : sl.streams) {
        st.prompt.clear();
        st.prompt.shrink_to_fit();
        st.copy_src = -1;
        st.copy_upto = 0;
        st.row = -1;
        st.keep_from = -1;
    }
    sl.last_used = ++clock_;
    publish_cells();
}

void engine::clear() {
    require_open();
    if (n_busy() > 0) {
        throw std::logic_error("clear() while slots are busy");
    }
    forget_all_cached();
    publish_cells();
}

bool engine::free_idle_caches() {
    llama_memory_t mem = llama_get_memory(ctx_.get());
    bool freed = false;
    for (slot & sl : slots_) {
        if (sl.state != slot_state::free) {
            continue;
        }
        for (stream & st : sl.streams) {
            if (!st.cached.empty()) {
                llama_memory_seq_rm(mem, st.seq, -1, -1);
                st.cached.clear();
                sync_cells(st);
                freed = true;
            }
        }
    }
    return freed;
}

void engine::forget_all_cached() {
    llama_memory_clear(llama_get_memory(ctx_.get()), true);
    for (slot & sl : slots_) {
        for (stream & st : sl.streams) {
            st.cached.clear();
            sync_cells(st);
        }
    }
}

void engine::batch_add(llama_token token, llama_pos pos, llama_seq_id seq, bool logits) {
    llama_batch & b = batch_.get();
    const int32_t i = b.n_tokens;
    if (i >= params_.n_batch) {
        throw std::logic_error("batch overflow");
    }
    b.token[i]     = token;
    b.pos[i]       = pos;
    b.n_seq_id[i]  = 1;
    b.seq_id[i][0] = seq;
    b.logits[i]    = logits;
    b.n_tokens++;
}

// A stream takes its shared prefix from its donor's cells (P's, or for P
// B's) as soon as the donor holds it: in a unified cache the cells become
// its too (nothing is copied); with a buffer per stream the donor's whole
// buffer is copied into its (llama.cpp can copy no less), carried out at the
// next decode, before that decode writes, and it is cut back to the prefix.
// A recurrent state is copied whole whatever the range and cannot be cut
// back, so where the donor is past the prefix the copy is not the prefix's:
// then the stream drops it and decodes the prefix itself.
void engine::take_shared_prefix(slot & sl, stream & b) {
    if (b.copy_src < 0) {
        return;
    }
    stream & p = sl.streams[b.copy_src];
    if ((int32_t) p.cached.size() < b.copy_upto) {
        return;
    }
    llama_memory_t mem = llama_get_memory(ctx_.get());
    bool taken = true;
    const int32_t from = (int32_t) b.cached.size();
    if (params_.kv_unified) {
        llama_memory_seq_cp(mem, p.seq, b.seq, (llama_pos) b.cached.size(), b.copy_upto);
    } else {
        llama_memory_seq_cp(mem, p.seq, b.seq, -1, -1);
        taken = llama_memory_seq_rm(mem, b.seq, b.copy_upto, -1);
    }
    if (taken && memory_holds_prefix(ctx_.get(), b.seq, b.copy_upto)) {
        b.cached.assign(b.prompt.begin(), b.prompt.begin() + b.copy_upto);
        share_cells(p, b, from);
    } else {
        llama_memory_seq_rm(mem, b.seq, -1, -1);
        if (sl.state == slot_state::prefill) {
            // what start() counted as taken (the taker decoded nothing while it waited) is decoded after all
            const size_t s = &b - sl.streams.data();
            sl.stats.shared    -= b.copy_upto - (int32_t) b.cached.size();
            sl.stats.reused[s]  = 0;
            sl.stats.cached[s]  = 0;
            sl.stats.decoded[s] = (int32_t) b.prompt.size();
        }
        b.cached.clear();
        sync_cells(b);  // seq_rm took its own cells too
    }
    b.copy_src  = -1;
    b.copy_upto = 0;
}

// With a buffer per stream llama.cpp puts in one forward only sequences
// whose ids follow each other in batch order: the batch goes in by sequence.
// Returns the new index of every old one.
std::vector<int32_t> engine::sort_batch_by_seq() {
    llama_batch & b = llama_batch_ref();
    const int32_t n = b.n_tokens;
    std::vector<int32_t> order(n);
    for (int32_t i = 0; i < n; ++i) {
        order[i] = i;
    }
    std::stable_sort(order.begin(), order.end(), [&b](int32_t x, int32_t y) { return b.seq_id[x][0] < b.seq_id[y][0]; });
    std::vector<llama_token> token(b.token, b.token + n);
    std::vector<llama_pos> pos(b.pos, b.pos + n);
    std::vector<llama_seq_id> seq(n);
    std::vector<int8_t> logits(b.logits, b.logits + n);
    for (int32_t i = 0; i < n; ++i) {
        seq[i] = b.seq_id[i][0];
    }
    std::vector<int32_t> new_index(n);
    for (int32_t i = 0; i < n; ++i) {
        const int32_t from = order[i];
        b.token[i]     = token[from];
        b.pos[i]       = pos[from];
        b.seq_id[i][0] = seq[from];
        b.logits[i]    = logits[from];
        new_index[from] = i;
    }
    return new_index;
}

// Adds as much of a prefilling slot's prompts as the budget allows. Every
// stream's last prompt token, whose logits are wanted, goes in the same batch
// as the others' (logits last only until the next decode).
void engine::add_prefill(slot & sl, int32_t & budget, std::vector<int32_t> & queued) {
    // where each donor waits: the nearest shared prefix a stream still has to take from it
    std::vector<int32_t> waits_at(sl.n_active, -1);
    for (int32_t s = 0; s < sl.n_active; ++s) {
        stream & st = sl.streams[s];
        take_shared_prefix(sl, st);
        if (st.copy_src >= 0 && (waits_at[st.copy_src] < 0 || st.copy_upto < waits_at[st.copy_src])) {
            waits_at[st.copy_src] = st.copy_upto;
        }
    }
    bool ready = true;
    for (int32_t s = 0; s < sl.n_active; ++s) {
        stream & st = sl.streams[s];
        if (st.copy_src >= 0) {
            ready = false;  // waits for its donor's cells
            continue;
        }
        int32_t body = (int32_t) st.prompt.size() - 1;
        if (waits_at[s] >= 0) {
            // A donor stops at a shared prefix until the stream that takes
            // it has it, so that the prefix is decoded in a batch of its own
            // and the taker's rest in one batch with the donor's (llama.cpp's
            // rounding depends on how rows are batched; so B's logits are
            // those of a context that decoded B's prompt alone)
            body = std::min(body, waits_at[s]);
        }
        int32_t pos = (int32_t) st.cached.size();
        while (pos < body && budget > 0) {
            const bool keep = st.keep_from >= 0 && pos >= st.keep_from;  // an evaluation's tail
            if (keep) {
                kept_rows_.push_back({s, pos, llama_batch_ref().n_tokens});
            }
            batch_add(st.prompt[pos], pos, st.seq, keep);
            ++pos;
            --budget;
        }
        queued[s] = pos - (int32_t) st.cached.size();
        ready = ready && pos == (int32_t) st.prompt.size() - 1;
    }
    if (!ready || budget < sl.n_active) {
        return;
    }
    for (int32_t s = 0; s < sl.n_active; ++s) {
        stream & st = sl.streams[s];
        const int32_t pos = (int32_t) st.prompt.size() - 1;
        st.row = llama_batch_ref().n_tokens;
        if (st.keep_from >= 0) {
            kept_rows_.push_back({s, pos, st.row});
        }
        batch_add(st.prompt[pos], pos, st.seq, true);
        queued[s]++;
        --budget;
    }
}

void engine::run_decode(const char * what) {
    int32_t rc = llama_decode(ctx_.get(), batch_.get());
    n_decode_calls_++;
    if (rc == 1 && free_idle_caches()) {
        // no room (llama.cpp applied nothing): the idle slots' prompt caches made way
        rc = llama_decode(ctx_.get(), batch_.get());
        n_decode_calls_++;
    }
    if (rc != 0) {
        // The cache may hold part of the batch now: forget it so the next
        // call starts from a known state instead of a corrupt one.
        forget_all_cached();
        throw std::runtime_error(std::string("llama_decode failed during ") + what + " (code " + std::to_string(rc) +
                                 (rc == 1 ? ": no room in the KV cache; the streams running hold more cells than "
                                            "it has" : "") + ")");
    }
}

const float * engine::logits_at(int32_t batch_index) const {
    const float * logits = llama_get_logits_ith(ctx_.get(), batch_index);
    if (logits == nullptr) {
        throw std::runtime_error("llama.cpp returned no logits for batch index " + std::to_string(batch_index));
    }
    return logits;
}

// Phases 1-3 of a step: the running slots' last sampled tokens, prefill
// chunks in the rest of the budget, sorted by sequence. queued: the tokens
// each slot's streams put in; stopped: running slots whose context (or, alone,
// the pool) is full, which put none. Returns false when the batch is empty.
bool engine::build_batch(std::vector<std::vector<int32_t>> & queued, std::vector<step_event> & stopped) {
    llama_batch_ref().n_tokens = 0;
    queued.assign(slots_.size(), std::vector<int32_t>(params_.n_streams, 0));
    stopped.clear();
    // Rows are this step's: a slot that puts nothing in the batch (a full
    // context, a prefill waiting for budget) must not keep last step's row,
    // which may lie past the end of this smaller batch.
    for (slot & sl : slots_) {
        for (stream & st : sl.streams) {
            st.row = -1;
        }
    }

    // 1. the running slots' last sampled tokens, one per stream
    for (int32_t i = 0; i < (int32_t) slots_.size(); ++i) {
        slot & sl = slots_[i];
        if (sl.state != slot_state::running) {
            continue;
        }
        if (at_end(sl)) {
            step_event ev;
            ev.slot = i;  // token -1: the caller finishes it with "length"
            stopped.push_back(ev);
            continue;
        }
        for (int32_t s = 0; s < sl.n_active; ++s) {
            stream & st = sl.streams[s];
            st.row = llama_batch_ref().n_tokens;
            batch_add(sl.next_token, (llama_pos) st.cached.size(), st.seq, true);
            queued[i][s] = 1;
        }
    }

    // 2. prefill chunks in the rest of the budget, oldest request first
    int32_t budget = params_.n_batch - llama_batch_ref().n_tokens;
    std::vector<int32_t> order;
    for (int32_t i = 0; i < (int32_t) slots_.size(); ++i) {
        if (slots_[i].state == slot_state::prefill) {
            order.push_back(i);
        }
    }
    std::sort(order.begin(), order.end(), [this](int32_t a, int32_t b) { return slots_[a].started < slots_[b].started; });
    for (int32_t i : order) {
        add_prefill(slots_[i], budget, queued[i]);
    }
    if (llama_batch_ref().n_tokens == 0) {
        return false;
    }

    // 3. in sequence order
    const std::vector<int32_t> new_index = sort_batch_by_seq();
    for (slot & sl : slots_) {
        for (stream & st : sl.streams) {
            if (sl.state != slot_state::free && st.row >= 0) {
                st.row = new_index[st.row];
            }
        }
    }
    return true;
}

std::vector<step_event> engine::step() {
    require_open();
    std::vector<step_event> events;  // preemptions, then the slots that stopped, then the tokens
    std::vector<std::vector<int32_t>> queued;
    std::vector<step_event> stopped;
    start_waiting();
    while (true) {
        if (!build_batch(queued, stopped)) {
            events.insert(events.end(), stopped.begin(), stopped.end());
            publish_cells();
            return events;
        }
        // 3. one llama_decode over all of it. Each token of the batch takes
        // a cell: without that many free, make_room frees some (idle caches,
        // then the newest request) and the batch is made again without what
        // it freed; so too if llama.cpp finds less room than the count says.
        if (params_.kv_unified && n_cells_free() < llama_batch_ref().n_tokens && make_room(events)) {
            continue;
        }
        const auto decode_start = std::chrono::steady_clock::now();
        int32_t rc = llama_decode(ctx_.get(), batch_.get());
        decode_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                                           decode_start).count();
        n_decode_calls_++;
        if (rc == 0) {
            break;
        }
        if (rc == 1 && make_room(events)) {
            continue;
        }
        // The cache may hold part of the batch now: forget it so the next
        // call starts from a known state instead of a corrupt one.
        forget_all_cached();
        publish_cells();
        throw std::runtime_error("llama_decode failed during a decode step (code " + std::to_string(rc) +
                                 (rc == 1 ? ": no room in the KV cache; the streams running hold more cells than "
                                            "it has" : "") + ")");
    }
    events.insert(events.end(), stopped.begin(), stopped.end());

    // 4. what each stream now holds; then a token for every slot whose logits are in
    std::vector<sample_job> jobs;
    for (int32_t i = 0; i < (int32_t) slots_.size(); ++i) {
        slot & sl = slots_[i];
        if (sl.state != slot_state::prefill && sl.state != slot_state::running) {
            continue;
        }
        bool sampled_now = sl.n_active > 0;
        for (int32_t s = 0; s < sl.n_active; ++s) {
            stream & st = sl.streams[s];
            if (sl.state == slot_state::running) {
                if (queued[i][s] > 0) {
                    st.cached.push_back(sl.next_token);
                }
            } else {
                const size_t from = st.cached.size();
                st.cached.insert(st.cached.end(), st.prompt.begin() + from, st.prompt.begin() + from + queued[i][s]);
            }
            sync_cells(st);
            sampled_now = sampled_now && queued[i][s] > 0 && st.row >= 0 &&
                          (sl.state == slot_state::running || st.cached.size() == st.prompt.size());
        }
        if (!sampled_now) {
            continue;
        }
        sample_job job;
        job.slot = i;
        try {
            job.logits_p = logits_at(sl.streams[STREAM_P].row);
            job.logits_b = sl.n_active >= 2 ? logits_at(sl.streams[STREAM_B].row) : nullptr;
            for (int32_t s = 2; s < sl.n_active; ++s) {
                job.logits_extra.push_back(logits_at(sl.streams[s].row));
            }
        } catch (const std::exception & e) {
            job.ev.error = e.what(); // this request fails; the others go on
        }
        jobs.push_back(std::move(job));
    }
    sample_all(jobs);
    for (sample_job & job : jobs) {
        slot & sl = slots_[job.slot];
        sl.next_token = job.ev.token;
        sl.state      = slot_state::running;
        sl.sampled_at = n_decode_calls_;
        sl.n_sampled++;
        events.push_back(std::move(job.ev));
    }
    publish_cells();
    return events;
}

std::vector<step_event> engine::run(int64_t budget_us, uint64_t seen) {
    using clock = std::chrono::steady_clock;
    const auto micros = [](clock::duration d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); };
    const auto start = clock::now();
    auto last = start;
    std::vector<step_event> events;
    std::vector<clock::time_point> made; // when each event's step ended
    while (true) {
        const int64_t calls = n_decode_calls_;
        std::vector<step_event> got = step();
        const auto now = clock::now();
        bool stop = n_decode_calls_ == calls || n_interrupts() != seen ||
                    micros(now - start) + micros(now - last) > budget_us;
        for (step_event & ev : got) {
            stop = stop || needs_caller(ev);
            events.push_back(std::move(ev));
            made.push_back(now);
        }
        last = now;
        if (stop) {
            break;
        }
    }
    const auto end = clock::now();
    for (size_t i = 0; i < events.size(); ++i) {
        events[i].age = std::chrono::duration<double>(end - made[i]).count();
    }
    return events;
}

// Whether the caller must see ev before the next step: anything but a token
// that neither starts nor ends its request (the first token's time is the
// request's time to first token; a stop string is the caller's to cut).
bool engine::needs_caller(const step_event & ev) const {
    if (ev.token < 0 || ev.eog || ev.preempted || ev.stop_seen || !ev.error.empty()) {
        return true;
    }
    const slot & sl = slots_[ev.slot];
    return sl.n_sampled <= 1 || (sl.max_tokens > 0 && sl.n_sampled >= sl.max_tokens);
}

// Each slot samples with its own chain from its own rows, so the slots of a
// step sample at once: on the OpenMP team the decode has just run on, whose
// threads spin awaiting the next decode, when llama.cpp's CPU backend and
// linalign are both built with OpenMP (one libgomp: the same team, no
// thread woken); one after another otherwise.
void engine::sample_all(std::vector<sample_job> & jobs) {
    const int32_t n = (int32_t) jobs.size();
    // one slot: its greedy scans split the vocabulary across the team instead
    for (sample_job & job : jobs) {
        if (slots_[job.slot].chain) {
            slots_[job.slot].chain->set_threads(n == 1 ? n_sample_threads_ : 1);
        }
    }
#ifdef LINALIGN_OPENMP
    if (n > 1 && n_sample_threads_ > 1) {
#    pragma omp parallel for num_threads(std::min(n, n_sample_threads_)) schedule(dynamic, 1)
        for (int32_t j = 0; j < n; ++j) {
            sample_one(jobs[j]);
        }
        return;
    }
#endif
    for (int32_t j = 0; j < n; ++j) {
        sample_one(jobs[j]);
    }
}

void engine::sample_one(sample_job & job) noexcept {
    step_event & ev = job.ev;
    ev.slot = job.slot;
    if (!ev.error.empty()) {
        return;
    }
    slot & sl = slots_[job.slot];
    try {
        ev.token     = sl.chain->sample(job.logits_p, job.logits_b, job.logits_extra.data(), job.logits_extra.size());
        ev.ratios    = sl.chain->applied_ratios();
        ev.guarded   = sl.chain->guarded();
        ev.plain_top = sl.chain->plain_top();
        describe_sample(sl, job);
    } catch (const std::exception & e) {
        ev.error = e.what(); // this request fails; the others go on
    } catch (...) {
        ev.error = "sampling failed";
    }
}

// Appends a token's bytes to what the slot keeps of its last ones; true when
// they now hold one of its stop strings. A stop string's UTF-8 bytes start a
// character (never a continuation byte), so where its text ends the decoded
// text these bytes end the generated bytes, whatever invalid bytes came
// before. The caller decodes and cuts: it finds a stop holding U+FFFD, which
// its text may show for invalid bytes, by itself, only later than run() could.
bool engine::watch_stops(slot & sl, const std::string & piece) {
    sl.recent += piece;
    bool seen = false;
    size_t longest = 0;
    for (const std::string & stop : sl.stops) {
        seen = seen || sl.recent.find(stop) != std::string::npos;
        longest = std::max(longest, stop.size());
    }
    if (sl.recent.size() >= longest) {
        sl.recent.erase(0, sl.recent.size() - (longest - 1));
    }
    return seen;
}

// What the Python layer needs of a sampled token, while the logits it was
// drawn from are still in the context: its text, whether it ends the
// generation, and the logprob entry when the request asked for one.
void engine::describe_sample(slot & sl, sample_job & job) {
    step_event & ev = job.ev;
    ev.piece = model_->token_to_piece(ev.token, false);
    ev.eog   = model_->is_eog(ev.token);
    ev.stop_seen = !sl.stops.empty() && watch_stops(sl, ev.piece);
    if (sl.n_logprobs < 0 || ev.eog) {
        return;
    }
    if (!sl.logprobs) {
        sl.logprobs = std::make_unique<token_logprob_calculator>(n_vocab_);
    }
    sampled_logits in;
    in.logits_p = job.logits_p;
    // B not decoded (ratio 0, or both prompts the same): P's logits stand in
    in.logits_b        = job.logits_b != nullptr ? job.logits_b : job.logits_p;
    in.logits_extra    = job.logits_extra;
    in.ratios          = ev.ratios;
    in.guarded         = ev.guarded;
    in.grammar_allowed = sl.chain->grammar_allowed();
    ev.logprob = sl.logprobs->compute(ev.token, in, sl.top_p, sl.temperature, sl.n_logprobs);
    ev.has_logprob = true;
    for (llama_token t : ev.logprob.top) {
        ev.top_pieces.push_back(model_->token_to_piece(t, false));
    }
    ev.plain_top_piece = model_->token_to_piece(ev.logprob.plain_top_token, false);
}

const float * engine::logits(int32_t slot_index, int32_t stream) const {
    const slot & sl = slot_at(slot_index);
    check_stream(stream);
    if (sl.state != slot_state::running || sl.sampled_at != n_decode_calls_) {
        throw std::runtime_error("no logits for slot " + std::to_string(slot_index) +
                                 ": they last only until the next decode after the step that sampled from them");
    }
    if (stream == STREAM_B && sl.n_active == 1) {
        if (!sl.b_is_p) {
            throw std::runtime_error("stream B is not decoded in this request (ratio 0)");
        }
        stream = STREAM_P;
    }
    if (stream >= sl.n_active) {
        throw std::runtime_error("stream " + std::to_string(stream) + " is not decoded in this request");
    }
    return logits_at(sl.streams[stream].row);
}

const std::vector<llama_token> * engine::grammar_allowed(int32_t slot_index) const {
    const slot & sl = slot_at(slot_index);
    if (sl.state != slot_state::running || sl.sampled_at != n_decode_calls_ || !sl.chain) {
        throw std::runtime_error("no sample to describe for slot " + std::to_string(slot_index) +
                                 ": it lasts only until the next decode after the step that sampled");
    }
    return sl.chain->grammar_allowed();
}

// Teacher forcing runs a request's prefill without its sampling: the slot
// takes both prompts as start() gives them (its cached prefix kept, a shared
// prefix taken from the other stream's cells), and add_prefill lays out the
// same chunks a step would, keeping the logits of the tail positions too;
// only this slot decodes, in llama_decode calls of its own.
void engine::eval_logits(int32_t slot_index, const std::vector<llama_token> & prompt_p,
                         const std::vector<llama_token> & prompt_b, int32_t n_tail_p, int32_t n_tail_b,
                         std::vector<float> & out_p, std::vector<float> & out_b) {
    slot & sl = slot_at(slot_index);
    if (sl.state != slot_state::free) {
        throw std::invalid_argument("slot " + std::to_string(slot_index) + " is busy");
    }
    check_prompt(prompt_p, "prompt");
    check_prompt(prompt_b, "base_prompt");
    check_fits({prompt_p, prompt_b}, sampling_params());
    if (n_tail_p < 1 || n_tail_p > (int32_t) prompt_p.size() || n_tail_b < 1 || n_tail_b > (int32_t) prompt_b.size()) {
        throw std::invalid_argument("n_tail must be between 1 and the prompt length");
    }
    const bool identical = prompt_p == prompt_b && n_tail_p == n_tail_b;
    constexpr int32_t N_EVAL = 2;  // P and B
    const std::vector<llama_token> * prompts[N_EVAL] = {&prompt_p, &prompt_b};
    const int32_t n_tail[N_EVAL] = {n_tail_p, n_tail_b};
    std::vector<float> * outs[N_EVAL] = {&out_p, &out_b};
    sl.n_active = identical ? 1 : 2;
    sl.b_is_p   = identical;
    sl.n_preempted = 0;
    for (int32_t s = 0; s < sl.n_active; ++s) {
        stream & st = sl.streams[s];
        const int32_t n = (int32_t) prompts[s]->size();
        st.prompt    = *prompts[s];
        st.row       = -1;
        st.copy_src  = -1;
        st.copy_upto = 0;
        st.keep_from = n - n_tail[s];
        keep_prefix(st, std::min<int32_t>((int32_t) common_prefix(st.cached, st.prompt), st.keep_from));
        outs[s]->assign((size_t) n_tail[s] * n_vocab_, 0.0f);
    }
    begin_prefill(sl);

    const auto done = [&]() {
        for (int32_t s = 0; s < sl.n_active; ++s) {
            if (sl.streams[s].cached.size() < sl.streams[s].prompt.size()) {
                return false;
            }
        }
        return true;
    };
    std::vector<int32_t> queued;
    try {
        while (!done()) {
            llama_batch_ref().n_tokens = 0;
            kept_rows_.clear();
            queued.assign(params_.n_streams, 0);
            int32_t budget = params_.n_batch;
            add_prefill(sl, budget, queued);
            if (llama_batch_ref().n_tokens == 0) {
                throw std::runtime_error("evaluation prefill made no progress");
            }
            const std::vector<int32_t> new_index = sort_batch_by_seq();
            run_decode("evaluation prefill");
            for (int32_t s = 0; s < sl.n_active; ++s) {
                stream & st = sl.streams[s];
                const size_t from = st.cached.size();
                st.cached.insert(st.cached.end(), st.prompt.begin() + from, st.prompt.begin() + from + queued[s]);
                sync_cells(st);
            }
            for (const kept_row & r : kept_rows_) {
                const int32_t tail_index = r.pos - sl.streams[r.stream].keep_from;
                std::memcpy(outs[r.stream]->data() + (size_t) tail_index * n_vocab_, logits_at(new_index[r.index]),
                            sizeof(float) * n_vocab_);
            }
        }
    } catch (...) {
        finish(slot_index);
        throw;
    }
    finish(slot_index);  // its KV stays as the slot's prompt cache
    if (identical) {
        out_b = out_p;
    }
}

} // namespace linalign
