// engine: one llama_context per model whose sequences are a pool of slots.
//
// A slot serves one request at a time and holds its streams: stream 0 is the
// principled prompt P, stream 1 the base prompt B (a request without a
// principle uses stream 0 alone), and streams 2, 3, ... the further
// principled prompts of a request that composes several principles
// (engine_params::n_streams says how many a slot can hold). Every step() is ONE llama_decode over the
// next token of every running slot's streams plus chunks of the prompts still
// being prefilled, within a per-step token budget, so running streams keep
// flowing while a long prompt is ingested. After the decode each slot whose
// logits are ready samples its next token with its own sampler chain.
//
// By default the streams share one pool of KV cells (kv_unified): a prefix
// two streams share is stored once, so a stream costs the cells it holds of
// its own. B takes the prefix it shares with P from P's cells instead of
// decoding it again. A finished slot keeps its streams' tokens and KV: the
// next request that shares a prefix with them prefills only the rest (the
// prompt cache). How the pool is shared out (admission, preemption) is the
// "KV pool" section below; kv_unified false gives each stream a buffer of
// its own instead, as in a context of its own.
#pragma once

#include "llama.h"
#include "llama_handles.h"
#include "model.h"
#include "sampling.h"
#include "token_logprobs.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace linalign {

// How many tokens a and b start with alike.
inline size_t common_prefix(const std::vector<llama_token> & a, const std::vector<llama_token> & b) {
    const size_t n = std::min(a.size(), b.size());
    size_t i = 0;
    while (i < n && a[i] == b[i]) {
        ++i;
    }
    return i;
}

// Whether a sequence's memory holds what decoding it on from position n
// reads (engine.cpp says what each kind of memory keeps).
bool memory_holds_prefix(llama_context * ctx, llama_seq_id seq, int32_t n);

struct engine_params {
    int32_t n_ctx           = 4096; // the most tokens one stream may hold (prompt + generated)
    int32_t n_slots         = 1;    // requests decoded at once
    int32_t n_batch         = 512;  // tokens per step (one forward): running streams first, then prefill chunks
    int32_t n_threads       = 0;    // 0 = llama.cpp's default
    int32_t n_threads_batch = 0;
    // llama_flash_attn_type: -1 auto (on where the backend runs it for this
    // model), 0 off (llama-cpp-python's default, so logits match a plain
    // Llama), 1 on
    int32_t flash_attn      = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    // true: one pool of cells for every stream; a shared prefix is stored
    // once, but a stream's cells lie where the pool had room, which moves its
    // logits by rounding (up to ~0.5 on the default Q4_1 model). false: a KV
    // buffer per stream, whose cell i holds position i, so each stream's
    // logits are bit for bit those of a context of its own whatever else is
    // cached or batched (llama.cpp's CPU kernels compute each row alone), at
    // n_ctx cells per stream of every slot.
    bool    kv_unified      = true;
    // Streams a slot can hold: P and B, plus one per further principle a
    // request may compose (with a buffer per stream each costs n_ctx cells
    // per slot; in the pool, only what it holds).
    int32_t n_streams       = 2;
    // With kv_unified: the cells of the one pool, in [n_ctx, n_ctx x
    // n_streams x n_slots]. 0: n_ctx per slot (llama.cpp rounds it up to a
    // multiple of 256), what plain decoding allocates: streams that share
    // their history (principle_position "end", the default) hold a chat as
    // long as plain decoding's, and each further principle costs only the
    // cells it holds. Streams that share little ("system") hold the history
    // once each; the Aligner makes its context again with a larger pool when
    // a request cannot fit alone (see "KV pool" below).
    int32_t n_cells         = 0;
    // With kv_unified: tokens per stream that admission keeps free for a
    // request's answer, beyond its prompts' cells (fewer when it asks for
    // fewer or its context has less room). Reserving all it may generate (a
    // chat's default is the rest of the context) would cost what a buffer per
    // stream costs; a request that grows past its reserve while the pool is
    // full is preempted, not failed. More: fewer preemptions, fewer requests
    // at once.
    int32_t reserve_tokens  = 256;
    // Count forward passes (n_forward_passes) with an eval callback.
    // llama.cpp fixes cb_eval when the context is made, and with one
    // installed a GPU backend synchronizes after every graph split, so only
    // a context made for measuring counts (the benchmarks' and tests').
    bool    count_passes    = false;
};

enum stream_id : int { STREAM_P = 0, STREAM_B = 1 };
// A slot's streams: P and B, and up to LINEAR_ALIGNMENT_MAX_PRINCIPLES - 1 more principled ones.
constexpr int32_t MIN_STREAMS = 2;
constexpr int32_t MAX_STREAMS = 1 + (int32_t) LINEAR_ALIGNMENT_MAX_PRINCIPLES;

struct prefill_stats {
    std::vector<int32_t> reused;  // per stream: tokens found in the slot's KV cache
    std::vector<int32_t> decoded; // per stream: tokens left to decode
    std::vector<int32_t> cached;  // per stream: tokens not computed for this request (its own cache, and
                                  // what it takes from a stream that already held them)
    int32_t              shared = 0; // tokens taken from another stream's cells instead of decoded (a shared prefix)
};

// ---- slot files (slot_state.cpp) ---------------------------------------------
//
// A stream's positions [p0, p1) whose cells are those of an earlier stream of
// the slot (donor < the stream): a prefix they share in the pool, saved once.
struct shared_run {
    int32_t donor = 0;
    int32_t p0    = 0;
    int32_t p1    = 0;
};

// One stream of a saved slot: the tokens its cache holds (position i at
// index i), the runs it shares with earlier streams, and llama.cpp's
// per-sequence state (llama_state_seq_get_data) of its other cells.
struct saved_stream {
    std::vector<llama_token> tokens;
    std::vector<shared_run>  shared;
    std::vector<uint8_t>     state;
};

// The same, to restore: the state is borrowed (the caller keeps it alive).
struct stream_to_restore {
    std::vector<llama_token> tokens;
    std::vector<shared_run>  shared;
    const uint8_t *          state   = nullptr;
    size_t                   n_state = 0;
};

// What a step produced for one slot.
struct step_event {
    int32_t     slot  = -1;
    llama_token token = -1;    // the token sampled, or -1 when the slot's context (or, alone, the pool) is full
    std::string error;         // set when this slot's sampler chain failed (the slot stays busy)
    // the step size each principled stream was applied at (P first), and
    // the (stream, token) pairs whose boost the echo guard dropped
    std::vector<float>                  ratios;
    std::vector<linear_alignment_guard> guarded;
    // the base stream's most likely token (among what a grammar allowed); -1
    // when the slot decodes no base stream (ratio 0, no principle)
    llama_token plain_top = -1;
    bool        preempted = false; // the pool was full: the slot's cells were freed and it waits to resume
    // The token's text (its bytes, special tokens unrendered) and whether it
    // ends generation (any EOG token of the vocabulary): what the Python
    // layer needs of a token, in the step's one call.
    std::string piece;
    bool        eog = false;
    // When the request asked for logprobs (sampling_params::n_logprobs >= 0):
    // the token's entry, and the pieces of its alternatives and of the
    // plain top token
    bool                     has_logprob = false;
    token_logprob            logprob;
    std::vector<std::string> top_pieces;
    std::string              plain_top_piece;
    // The bytes the request generated so far end with one of its stop
    // strings (start(..., stops)): the caller's text may stop here.
    bool        stop_seen = false;
    // Seconds from the end of the step that made it to the return of the
    // call that returned it (run() returns several steps' events; step()'s
    // are 0): when the token came, on the caller's clock.
    double      age = 0.0;
};

class engine {
public:
    engine(std::shared_ptr<model> mdl, const engine_params & params);
    ~engine();
    engine(const engine &) = delete;
    engine & operator=(const engine &) = delete;

    using prompt_list = std::vector<std::vector<llama_token>>;

    // The free slot whose cached tokens share the longest prefix with the
    // prompts (summed over streams), less GAP_COST_TOKENS per stream of a slot
    // for every run of busy slots it would add (see below); least recently
    // used among equals. -1 when all are busy. prompts: P, B, then any
    // further principled ones.
    int32_t pick_slot(const prompt_list & prompts) const;

    // With a KV buffer per stream, llama.cpp puts only consecutive sequence
    // ids in one ubatch, so every run of busy slots after the first costs the
    // step one more forward pass (docs/serving.md: four requests in slots 0-3
    // step in one pass, 55 ms here; in slots 0,2,4,6 in four, 75 ms). A pass
    // costs the running requests about what prefilling a stream's prompt
    // token does, and an answer runs for tens of steps, so a slot that would
    // start a new run has to save this many prompt tokens per stream of a
    // slot before it is worth taking; one that joins or closes a run gains it.
    static constexpr int64_t GAP_COST_TOKENS = 48;

    // Starts a request in a free slot: keeps the longest cached prefix of each
    // stream (none when cache_prompt is false) and queues the rest for
    // prefill by step(). prompts: P, B, then one per params.extra_ratios.
    // max_tokens: the most tokens it will sample (<= 0: up to n_ctx), which
    // sizes its reserve. Without room_for() it waits in its slot, holding no
    // more than its kept prefix, and a later step() starts it (see "KV pool").
    // stops: the request's stop strings (UTF-8), which run() watches for in
    // the bytes it generates (the caller cuts the text).
    // Throws std::invalid_argument for a busy slot, a prompt count that does
    // not match the parameters or the slot, empty or too-long prompts, bad
    // token ids, bad sampling parameters, or prompts whose cells alone do not
    // fit the pool (check_fits).
    prefill_stats start(int32_t slot, const prompt_list & prompts, const sampling_params & params, bool cache_prompt,
                        int32_t max_tokens = 0, const std::vector<std::string> & stops = {});

    // ---- KV pool --------------------------------------------------------
    //
    // Cells. The engine counts the cells its streams hold as llama.cpp's
    // unified cache does (0.3.36 has no public query): every cached position
    // of every stream is a cell, except that a range a stream takes from
    // another's cells (take_shared_prefix: llama_memory_seq_cp in the pool)
    // is the same cells, counted once, until either stream drops them. Each
    // stream keeps the id of the cell under each of its positions
    // (stream::cells); a cell is free again when no stream holds its id.
    // Streams share cells only within a slot. With a buffer per stream
    // nothing is shared and a stream holds one cell per cached token.
    //
    // Admission (room_for). A request's cells are what its streams will hold
    // once its prompts are in: the prefix each keeps from the slot's cache,
    // a shared prefix once, plus the rest of each prompt; plus, in the same
    // slot, what its unused streams still cache. Its reserve is
    // min(max_tokens, reserve_tokens, room left in its context) per stream it
    // decodes. Busy slots are committed to their cells once prefilled and
    // what is left of their reserves (a reserve shrinks as the answer grows);
    // waiting slots to what they need to start. A request has room when its
    // cells and reserve (at most the whole pool) fit beside all that. Idle
    // slots' prompt caches do not count: a step frees them when it needs
    // their cells. Prompts whose cells alone exceed the pool never fit
    // (check_fits throws).
    //
    // Preemption. Each token of a step's batch takes a cell. When fewer are
    // free (counted before each llama_decode; or llama_decode finds no room
    // after all) the step frees, one at a time, and makes its batch again:
    // the least recently used idle slot's cache; the caches of
    // streams that busy slots hold but do not decode (and waiting slots'
    // kept prefixes); then the newest request (started last) is preempted
    // (recompute preemption, as vLLM's): its cells are freed, each of its
    // streams' prompt becomes what it held plus its last sampled token, and
    // it waits in its slot with its sampler chain (penalty history, grammar
    // state, RNG) untouched. When it has room again (waiting slots start
    // oldest first, and before any request that does not fit beside them),
    // step() prefills those prompts and samples its next token from the
    // same chain, as the step it lost would have. A request alone in a pool
    // it fills ends with token -1, as at a full context.
    //
    // Whether the pool has room now for a request in a free slot (always,
    // with a buffer per stream).
    bool room_for(int32_t slot, const prompt_list & prompts, const sampling_params & params, bool cache_prompt,
                  int32_t max_tokens = 0) const;
    // Throws std::invalid_argument when the prompts' cells alone (an empty
    // cache, a shared prefix once) exceed the pool. Reads nothing that a
    // step changes: safe beside one, on another thread.
    void check_fits(const prompt_list & prompts, const sampling_params & params) const;
    // The cells the prompts' streams hold once prefilled in an empty slot.
    int64_t cells_alone(const prompt_list & prompts, const sampling_params & params) const;
    // Those and the reserve admission keeps for the answer (max_tokens <= 0:
    // up to the context's end): what a request needs free to start alone.
    int64_t cells_to_start(const prompt_list & prompts, const sampling_params & params, int32_t max_tokens) const;
    bool    waiting(int32_t slot) const { return slot_at(slot).state == slot_state::waiting; }
    // Published after every change, atomically: /health reads them while
    // another thread decodes.
    int64_t n_cells_total() const { return n_cells_total_; }       // the pool, or every stream's buffer
    int64_t n_cells_used() const { return n_cells_used_pub_; }     // held by every stream, a shared cell once
    int64_t n_cells_idle() const { return n_cells_idle_pub_; }     // of those, held by free slots' prompt caches
    int64_t n_preemptions() const { return n_preemptions_; }
    int32_t n_waiting() const { return n_waiting_pub_; }           // slots waiting for room (preempted or not yet started)

    // One llama_decode over every busy slot, then a sample for each slot whose
    // prompt is in. Returns nothing when no slot has work.
    std::vector<step_event> step();
    // Steps while nothing needs the caller, within about budget_us, and
    // returns every step's events in order (docs/overhead.md, item 13). It
    // returns after the first step that decoded nothing, or whose events the
    // caller must act on (needs_caller: a request ended, failed, was
    // preempted, sampled its first token, reached max_tokens or saw a stop
    // string); after any step once interrupt() was called since the caller
    // read n_interrupts() (seen); and before a step that would likely end
    // past the budget (as long as the last one took). At least one step runs.
    // What it stepped before a failed llama_decode is lost with the
    // exception, which fails every running request anyway.
    std::vector<step_event> run(int64_t budget_us, uint64_t seen);
    // Makes a run() in progress, or the next one called with an older seen,
    // return after its step: the caller has work between steps (a request to
    // start or cancel). Safe from any thread, without the caller's lock.
    void     interrupt() { n_interrupts_.fetch_add(1, std::memory_order_acq_rel); }
    uint64_t n_interrupts() const { return n_interrupts_.load(std::memory_order_acquire); }

    // Frees a slot (finished, cancelled, or waiting). Its KV stays as a prompt
    // cache; the token it sampled last is not decoded.
    void finish(int32_t slot);

    // The next-token logits of a slot's stream after the step that sampled
    // from them (n_vocab floats, valid until the next decode).
    const float * logits(int32_t slot, int32_t stream) const;

    // The tokens the slot's grammar allowed at that step (nullptr: no grammar);
    // valid as long as logits() is.
    const std::vector<llama_token> * grammar_allowed(int32_t slot) const;

    // Teacher forcing for evaluation, on a free slot: prefills both prompts
    // as a request's prefill does (its cache reused, a shared prefix taken
    // from P's cells, the chunks add_prefill lays out), in llama_decode calls
    // of its own (no other slot moves), and returns the logits of the last
    // n_tail_p positions of P and n_tail_b of B, row-major.
    void eval_logits(int32_t slot, const std::vector<llama_token> & prompt_p, const std::vector<llama_token> & prompt_b,
                     int32_t n_tail_p, int32_t n_tail_b, std::vector<float> & out_p, std::vector<float> & out_b);

    // ---- slot files (slot_state.cpp) ---------------------------------
    //
    // A free slot's prompt cache as llama.cpp's per-sequence states, one per
    // stream up to the last that holds anything. In the pool, positions whose
    // cells a stream shares with an earlier stream are left out of its state
    // (taken out of the sequence for the copy, put back after) and saved as
    // a shared_run: the shared prefix is saved once. Throws
    // std::invalid_argument for a busy slot.
    std::vector<saved_stream> save_slot(int32_t slot);
    // Checks what restore_slot would refuse, touching nothing: more streams
    // than a slot holds, a stream longer than n_ctx, token ids outside the
    // vocabulary, runs that are out of range, overlap, name a later donor or
    // hold other tokens than the donor's (std::invalid_argument).
    void check_saved(const std::vector<stream_to_restore> & streams) const;
    // The KV cells the streams hold once restored (a shared run once).
    int64_t cells_of_saved(const std::vector<stream_to_restore> & streams) const;
    // Replaces a free slot's prompt cache with saved streams: their own
    // cells from their states, then their shared runs copied from their
    // donors (llama_memory_seq_cp: the same cells). Idle slots' caches make
    // way when the pool is short. Throws std::invalid_argument (check_saved,
    // a busy slot, more cells than the pool has, or than busy slots leave
    // free) before anything changes, and std::runtime_error when llama.cpp
    // refuses a state; then the slot is left empty. Returns the tokens of P.
    int32_t restore_slot(int32_t slot, const std::vector<stream_to_restore> & streams);
    // Forgets a free slot's prompt cache; returns the tokens P held.
    int32_t erase_slot(int32_t slot);
    // The KV cache's element types (ggml_type) and the flash-attention
    // setting asked for: a saved state's layout depends on them.
    int32_t kv_type_k() const { return kv_type_k_; }
    int32_t kv_type_v() const { return kv_type_v_; }

    void clear();  // forgets every slot's cache (all slots must be free)
    void close();
    bool closed() const { return !ctx_; }

    int32_t n_ctx() const { return params_.n_ctx; }
    int32_t n_slots() const { return params_.n_slots; }
    int32_t n_batch() const { return params_.n_batch; }
    int32_t n_streams() const { return params_.n_streams; }
    const engine_params & params() const { return params_; }
    bool    busy(int32_t slot) const { return slot_at(slot).state != slot_state::free; }
    int32_t n_busy() const;
    int32_t n_past(int32_t slot, int32_t stream) const { return (int32_t) slot_at(slot).streams[check_stream(stream)].cached.size(); }
    int32_t n_active_streams(int32_t slot) const { return slot_at(slot).n_active; }
    const prefill_stats & last_prefill(int32_t slot) const { return slot_at(slot).stats; }
    int64_t n_decode_calls() const { return n_decode_calls_; }
    double decode_seconds() const { return (double) decode_ns_ * 1e-9; }
    // Forward passes llama.cpp ran (its ubatches: graphs computed). One
    // llama_decode can be several: with a KV buffer per stream llama.cpp
    // splits a batch where sequence ids are not consecutive, and where a
    // prompt chunk shares a step with one-token decodes (docs/serving.md).
    // Counted only with engine_params::count_passes (see counts_passes).
    int64_t n_forward_passes() const { return n_forward_passes_; }
    bool    counts_passes() const { return params_.count_passes; }
    const model & get_model() const { return *model_; }

private:
    enum class slot_state { free, waiting, prefill, running };

    struct stream {
        llama_seq_id             seq = 0;
        std::vector<llama_token> cached;       // tokens in the KV cache, position i at index i
        std::vector<uint32_t>    cells;        // the id of the cell under each cached position (see "KV pool")
        std::vector<llama_token> prompt;       // what the request wants it to hold before sampling
        // the prefix of its prompt it takes from another stream's cells once
        // that stream holds them: copy_upto tokens from stream copy_src
        int32_t                  copy_src  = -1;
        int32_t                  copy_upto = 0;
        int32_t                  row = -1;     // batch index of its logits after the last decode
        // evaluation (eval_logits): the first prompt position whose logits
        // are kept, before the last; -1 for a request, which samples from
        // the last position's alone
        int32_t                  keep_from = -1;
    };

    struct slot {
        slot_state                     state = slot_state::free;
        std::vector<stream>            streams;           // n_streams of them
        int32_t                        n_active = 0;      // streams this request decodes (1, 2, or 2 + extra principles)
        bool                           b_is_p = false;    // identical prompts: B's logits are P's
        llama_token                    next_token = -1;   // sampled, decoded at the next step
        std::unique_ptr<sampler_chain> chain;
        int32_t                        n_logprobs = -1;   // alternatives per logprob entry; -1: no entries
        float                          top_p = 1.0f;      // the request's nucleus and temperature, for the entries
        float                          temperature = 1.0f;
        prefill_stats                  stats;
        uint64_t                       started = 0;       // order of start(): older prefills go first
        uint64_t                       last_used = 0;
        int64_t                        sampled_at = -1;   // the decode call whose logits it sampled from
        // the KV pool (see above)
        int64_t                        n_cells = 0;       // cells its streams hold, a shared one once
        int64_t                        reserve = 0;       // cells admission kept for its answer, all streams
        int32_t                        n_sampled = 0;     // tokens sampled so far
        int32_t                        max_tokens = 0;    // the most it samples (<= 0: up to n_ctx)
        std::vector<std::string>       stops;             // its stop strings, none empty
        std::string                    recent;            // its last bytes, as many as the longest stop less one
        int32_t                        n_preempted = 0;   // times preempted (its stats are of its first prefill)
        bool                           pool_full = false; // alone, it filled the pool: it ends as at a full context
        // its logprob entries' scratch, made when it first asks for them
        // (one per slot: slots sample at once, sample_all)
        std::unique_ptr<token_logprob_calculator> logprobs;
    };

    // One slot's sampling in a step: the logits rows it samples from, taken
    // before any slot samples (llama_get_logits_ith synchronizes the
    // context, which is not for threads), and the event it makes.
    struct sample_job {
        int32_t                    slot = -1;
        const float *              logits_p = nullptr;
        const float *              logits_b = nullptr; // nullptr: B not decoded
        std::vector<const float *> logits_extra;
        step_event                 ev;
    };

    // A prefix one stream (the taker) takes from another's cells: the
    // taker's positions [from, upto) are the donor's.
    struct shared_prefix {
        int32_t taker = 0;
        int32_t donor = 0;
        int32_t from = 0;      // what the taker holds already
        int32_t upto = 0;
        int32_t donor_has = 0; // of [0, upto), what the donor holds already
    };
    using prompt_refs = std::vector<const std::vector<llama_token> *>;
    // A logits row an evaluation keeps: its stream, prompt position and batch index.
    struct kept_row {
        int32_t stream = 0;
        int32_t pos = 0;
        int32_t index = 0;
    };

    void require_open() const;
    const slot & slot_at(int32_t i) const;
    slot & slot_at(int32_t i) { return const_cast<slot &>(static_cast<const engine *>(this)->slot_at(i)); }
    int32_t check_stream(int32_t stream) const;
    void check_prompt(const std::vector<llama_token> & prompt, const char * name) const;
    int32_t keep_prefix(stream & st, int32_t n);
    void take_shared_prefix(slot & sl, stream & st);
    void batch_add(llama_token token, llama_pos pos, llama_seq_id seq, bool logits);
    std::vector<int32_t> sort_batch_by_seq();
    void add_prefill(slot & sl, int32_t & budget, std::vector<int32_t> & queued);
    void forget_all_cached();
    void forget_slot(slot & sl);
    std::vector<shared_run> shared_runs(const slot & sl, int32_t s) const;
    bool free_idle_caches();
    int32_t active_streams(const prompt_list & prompts, const sampling_params & params) const;
    bool at_end(const slot & sl) const;
    std::vector<shared_prefix> plan_shared_prefixes(const prompt_refs & prompts, const std::vector<int32_t> & n_cached,
                                                    const std::vector<int32_t> & keep_from = {}) const;
    void begin_prefill(slot & sl);
    void begin_prefill_stats(slot & sl);
    bool build_batch(std::vector<std::vector<int32_t>> & queued, std::vector<step_event> & stopped);

    // the KV pool (kv_pool.cpp)
    uint32_t new_cell(slot & sl);
    void release_cell(slot & sl, uint32_t id);
    void sync_cells(stream & st);
    void share_cells(const stream & donor, stream & taker, int32_t from);
    slot & slot_of(const stream & st) { return slots_[st.seq / params_.n_streams]; }
    int64_t cells_once_prefilled(const slot & sl, const prompt_refs & prompts, const std::vector<int32_t> & kept) const;
    int64_t reserve_left(const slot & sl) const;
    int64_t committed(const slot & sl) const;
    int64_t committed_by_others(const slot * except) const;
    void start_waiting();
    bool make_room(std::vector<step_event> & events);
    bool free_lru_idle_cache();
    bool drop_unused_caches();
    void preempt(slot & sl);
    void publish_cells();
    int64_t n_cells_free() const;
    // tokens per active stream kept free for the answer when a request starts
    int64_t answer_reserve(const prompt_list & prompts, int32_t n_active, int32_t max_tokens) const;
    llama_batch & llama_batch_ref() { return batch_.get(); }
    void run_decode(const char * what);
    void sample_all(std::vector<sample_job> & jobs);
    void sample_one(sample_job & job) noexcept;
    void describe_sample(slot & sl, sample_job & job);
    static bool watch_stops(slot & sl, const std::string & piece);
    bool needs_caller(const step_event & ev) const;
    const float * logits_at(int32_t batch_index) const;

    std::shared_ptr<model> model_;
    engine_params          params_;
    context_ptr            ctx_;
    batch_owner            batch_;
    int32_t                n_vocab_ = 0;
    std::vector<slot>      slots_;
    int32_t                n_sample_threads_ = 1; // threads that sample slots at once (sample_all)
    std::vector<kept_row>  kept_rows_;  // an evaluation's rows in the batch being built
    uint64_t               clock_ = 0;
    // atomic: the server's /health reads both while another thread decodes
    std::atomic<int64_t>   n_decode_calls_{0};
    std::atomic<int64_t>   decode_ns_{0};
    std::atomic<uint64_t>  n_interrupts_{0};
    std::atomic<int64_t>   n_forward_passes_{0};  // written by llama.cpp's eval callback
    // the KV pool: each cell id's holders (0: free, its id in free_cells_)
    int64_t                n_cells_total_ = 0;
    std::vector<int32_t>   cell_refs_;
    std::vector<uint32_t>  free_cells_;
    std::atomic<int64_t>   n_cells_used_pub_{0};
    std::atomic<int64_t>   n_cells_idle_pub_{0};
    std::atomic<int32_t>   n_waiting_pub_{0};
    std::atomic<int64_t>   n_preemptions_{0};
    int32_t                kv_type_k_ = 0;
    int32_t                kv_type_v_ = 0;
};

} // namespace linalign
