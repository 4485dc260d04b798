// kv_pool: the engine's account of the KV cells its streams hold, and what
// it does with it: admission (room_for, check_fits), the slots that wait for
// room, and preemption when a step finds the pool full (see "KV pool" in
// engine.h).
#include "engine.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace linalign {

// ---- the ledger: the cell under each cached position -----------------------

uint32_t engine::new_cell(slot & sl) {
    uint32_t id;
    if (!free_cells_.empty()) {
        id = free_cells_.back();
        free_cells_.pop_back();
    } else {
        id = (uint32_t) cell_refs_.size();
        cell_refs_.push_back(0);
    }
    cell_refs_[id] = 1;
    sl.n_cells++;
    return id;
}

void engine::release_cell(slot & sl, uint32_t id) {
    if (--cell_refs_[id] == 0) {
        free_cells_.push_back(id);
        sl.n_cells--;
    }
}

// Brings a stream's cell ids in line with its cached tokens after they
// changed (every change to stream::cached is followed by this): positions it
// dropped release their cells, positions it decoded are cells of its own.
void engine::sync_cells(stream & st) {
    slot & sl = slot_of(st);
    while (st.cells.size() > st.cached.size()) {
        release_cell(sl, st.cells.back());
        st.cells.pop_back();
    }
    while (st.cells.size() < st.cached.size()) {
        st.cells.push_back(new_cell(sl));
    }
}

// The taker's positions [from, cached.size()) came from the donor
// (take_shared_prefix): in the pool they are the donor's cells; with a buffer
// per stream the donor's buffer was copied over the taker's, all of it new.
void engine::share_cells(const stream & donor, stream & taker, int32_t from) {
    slot & sl = slot_of(taker);
    const size_t upto = taker.cached.size();
    const size_t own = params_.kv_unified ? (size_t) from : 0;
    while (taker.cells.size() > own) {
        release_cell(sl, taker.cells.back());
        taker.cells.pop_back();
    }
    if (!params_.kv_unified) {
        sync_cells(taker);
        return;
    }
    for (size_t i = own; i < upto; ++i) {
        const uint32_t id = donor.cells.at(i);
        cell_refs_[id]++;
        taker.cells.push_back(id);
    }
}

void engine::publish_cells() {
    int64_t used = 0, idle = 0;
    int32_t waiting = 0;
    for (const slot & sl : slots_) {
        used += sl.n_cells;
        idle += sl.state == slot_state::free ? sl.n_cells : 0;
        waiting += sl.state == slot_state::waiting ? 1 : 0;
    }
    n_cells_used_pub_ = used;
    n_cells_idle_pub_ = idle;
    n_waiting_pub_ = waiting;
}

int64_t engine::n_cells_free() const {
    int64_t used = 0;
    for (const slot & sl : slots_) {
        used += sl.n_cells;
    }
    return n_cells_total_ - used;
}

// ---- admission ----------------------------------------------------------------

// What a slot holds once its streams hold their prompts, having kept
// kept[s] positions of stream s's cache: the kept cells (a shared one once,
// and the whole cache of each stream the request does not decode), the rest
// of each prompt, less what a stream takes from another's cells.
int64_t engine::cells_once_prefilled(const slot & sl, const prompt_refs & prompts,
                                     const std::vector<int32_t> & kept) const {
    std::vector<uint32_t> ids;
    for (size_t s = 0; s < sl.streams.size(); ++s) {
        const std::vector<uint32_t> & cells = sl.streams[s].cells;
        const size_t n = s < prompts.size() ? std::min<size_t>(kept[s], cells.size()) : cells.size();
        ids.insert(ids.end(), cells.begin(), cells.begin() + n);
    }
    std::sort(ids.begin(), ids.end());
    int64_t n = (int64_t) (std::unique(ids.begin(), ids.end()) - ids.begin());
    for (size_t s = 0; s < prompts.size(); ++s) {
        n += (int64_t) prompts[s]->size() - kept[s];
    }
    for (const shared_prefix & sp : plan_shared_prefixes(prompts, kept)) {
        n -= sp.upto - sp.from;
    }
    return n;
}

// What is left of a slot's reserve: each stream has used one cell of it per
// token decoded after its prompt (the first sampled token is decoded a step
// after it is sampled).
int64_t engine::reserve_left(const slot & sl) const {
    return std::max<int64_t>(0, sl.reserve - (int64_t) sl.n_active * std::max(0, sl.n_sampled - 1));
}

// The cells a busy slot is committed to: what it holds once its prompts are
// in and what is left of its reserve (at most the pool).
int64_t engine::committed(const slot & sl) const {
    int64_t n = 0;
    if (sl.state == slot_state::free) {
        return 0;
    }
    if (sl.state == slot_state::waiting) {
        prompt_refs prompts;
        std::vector<int32_t> kept;
        for (int32_t s = 0; s < sl.n_active; ++s) {
            prompts.push_back(&sl.streams[s].prompt);
            kept.push_back((int32_t) sl.streams[s].cached.size());
        }
        n = cells_once_prefilled(sl, prompts, kept);
    } else {
        n = sl.n_cells;
        if (sl.state == slot_state::prefill) {
            for (int32_t s = 0; s < sl.n_active; ++s) {
                const stream & st = sl.streams[s];
                n += (int64_t) st.prompt.size() - (int64_t) st.cached.size();
                if (st.copy_src >= 0) {
                    n -= st.copy_upto - (int64_t) st.cached.size();  // the donor's cells
                }
            }
        }
    }
    return std::min(n + reserve_left(sl), n_cells_total_);
}

int64_t engine::committed_by_others(const slot * except) const {
    int64_t n = 0;
    for (const slot & sl : slots_) {
        n += &sl == except ? 0 : committed(sl);
    }
    return n;
}

int64_t engine::cells_alone(const prompt_list & prompts, const sampling_params & params) const {
    if (prompts.size() < 2) {
        throw std::invalid_argument("expected at least 2 prompts (P and B), got " + std::to_string(prompts.size()));
    }
    const int32_t n_active = active_streams(prompts, params);
    prompt_refs refs;
    int64_t n = 0;
    for (int32_t s = 0; s < n_active; ++s) {
        refs.push_back(&prompts[s]);
        n += (int64_t) prompts[s].size();
    }
    for (const shared_prefix & sp : plan_shared_prefixes(refs, std::vector<int32_t>(n_active, 0))) {
        n -= sp.upto - sp.from;
    }
    return n;
}

int64_t engine::answer_reserve(const prompt_list & prompts, int32_t n_active, int32_t max_tokens) const {
    const int32_t reserve_tokens = std::min(max_tokens > 0 ? max_tokens : params_.n_ctx, params_.reserve_tokens);
    int64_t reserve = 0;
    for (int32_t s = 0; s < n_active; ++s) {
        reserve += std::max(0, std::min(reserve_tokens, params_.n_ctx - (int32_t) prompts[s].size()));
    }
    return reserve;
}

int64_t engine::cells_to_start(const prompt_list & prompts, const sampling_params & params, int32_t max_tokens) const {
    return cells_alone(prompts, params) + answer_reserve(prompts, active_streams(prompts, params), max_tokens);
}

void engine::check_fits(const prompt_list & prompts, const sampling_params & params) const {
    if (!params_.kv_unified) {
        return;
    }
    const int64_t n = cells_alone(prompts, params);
    if (n > n_cells_total_) {
        throw std::invalid_argument(
            "this request's streams hold " + std::to_string(n) + " KV cells once its prompts are in (a prefix they "
            "share counted once), more than the KV pool's " + std::to_string(n_cells_total_) + ": shorten the "
            "conversation, put the principle after it (principle_position 'end': the streams then share it), or "
            "give the pool more cells (kv_cells, --kv-cells) or each stream a buffer of its own (kv_unified=False, "
            "--kv-layout per-stream)");
    }
}

bool engine::room_for(int32_t slot_index, const prompt_list & prompts, const sampling_params & params,
                      bool cache_prompt, int32_t max_tokens) const {
    const slot & sl = slot_at(slot_index);
    if (!params_.kv_unified) {
        return true;  // each stream has its buffer of n_ctx cells
    }
    if (prompts.size() < 2 || prompts.size() > sl.streams.size()) {
        throw std::invalid_argument("expected 2 to " + std::to_string(sl.streams.size()) + " prompts, got " +
                                    std::to_string(prompts.size()));
    }
    const int32_t n_active = active_streams(prompts, params);
    prompt_refs refs;
    std::vector<int32_t> kept;
    for (int32_t s = 0; s < n_active; ++s) {
        const std::vector<llama_token> & prompt = prompts[s];
        const int32_t n = (int32_t) prompt.size();
        refs.push_back(&prompt);
        kept.push_back(cache_prompt ? std::min<int32_t>((int32_t) common_prefix(sl.streams[s].cached, prompt), n - 1) : 0);
    }
    const int64_t reserve = answer_reserve(prompts, n_active, max_tokens);
    const int64_t need = std::min(cells_once_prefilled(sl, refs, kept) + reserve, n_cells_total_);
    return committed_by_others(&sl) + need <= n_cells_total_;
}

// Waiting slots start, oldest first, while the pool has room for each
// beside what the busy ones are committed to; a younger one never starts
// before an older one that does not fit.
void engine::start_waiting() {
    std::vector<slot *> waiting;
    int64_t base = 0;
    for (slot & sl : slots_) {
        if (sl.state == slot_state::waiting) {
            waiting.push_back(&sl);
        } else {
            base += committed(sl);
        }
    }
    std::sort(waiting.begin(), waiting.end(), [](const slot * a, const slot * b) { return a->started < b->started; });
    for (slot * sl : waiting) {
        const int64_t need = committed(*sl);
        if (base + need > n_cells_total_) {
            break;
        }
        begin_prefill(*sl);
        base += need;
    }
}

// ---- preemption ---------------------------------------------------------------

// After llama_decode found no room: frees some cells, so that the step can
// try again, in the order engine.h gives. Returns false when nothing is left
// to free.
bool engine::make_room(std::vector<step_event> & events) {
    if (free_lru_idle_cache() || drop_unused_caches()) {
        return true;
    }
    std::vector<slot *> active;  // the slots in this step's batch, or waiting in it for budget
    for (slot & sl : slots_) {
        const bool stopped = sl.state == slot_state::running && at_end(sl);
        if ((sl.state == slot_state::prefill || sl.state == slot_state::running) && !stopped) {
            active.push_back(&sl);
        }
    }
    if (active.empty()) {
        return false;
    }
    slot & newest = **std::max_element(active.begin(), active.end(),
                                       [](const slot * a, const slot * b) { return a->started < b->started; });
    if (active.size() == 1) {
        if (newest.state == slot_state::running) {
            newest.pool_full = true;  // alone, it fills the pool: it ends as at a full context
            return true;
        }
        // A prompt alone fits the pool (check_fits), but the cache it kept
        // may hold a shared prefix twice: start it again from nothing, once.
        if (newest.n_preempted > 0) {
            return false;
        }
    }
    preempt(newest);
    step_event ev;
    ev.slot = (int32_t) (&newest - slots_.data());
    ev.preempted = true;
    events.push_back(ev);
    return true;
}

bool engine::free_lru_idle_cache() {
    slot * lru = nullptr;
    for (slot & sl : slots_) {
        if (sl.state == slot_state::free && sl.n_cells > 0 && (lru == nullptr || sl.last_used < lru->last_used)) {
            lru = &sl;
        }
    }
    if (lru == nullptr) {
        return false;
    }
    llama_memory_t mem = llama_get_memory(ctx_.get());
    for (stream & st : lru->streams) {
        llama_memory_seq_rm(mem, st.seq, -1, -1);
        st.cached.clear();
        sync_cells(st);
    }
    return true;
}

// The caches of streams that busy slots hold but do not decode, and the
// prefixes waiting slots kept.
bool engine::drop_unused_caches() {
    llama_memory_t mem = llama_get_memory(ctx_.get());
    bool dropped = false;
    for (slot & sl : slots_) {
        if (sl.state == slot_state::free) {
            continue;
        }
        const int32_t first_unused = sl.state == slot_state::waiting ? 0 : sl.n_active;
        for (int32_t s = first_unused; s < (int32_t) sl.streams.size(); ++s) {
            stream & st = sl.streams[s];
            if (!st.cached.empty()) {
                llama_memory_seq_rm(mem, st.seq, -1, -1);
                st.cached.clear();
                sync_cells(st);
                dropped = true;
            }
        }
    }
    return dropped;
}

// Recompute preemption: frees every cell of the slot; each stream's prompt
// becomes what it held and the token sampled last (not decoded yet), and the
// slot waits with its sampler chain as it is. A slot still prefilling keeps
// its prompts. start_waiting() starts it again.
void engine::preempt(slot & sl) {
    llama_memory_t mem = llama_get_memory(ctx_.get());
    for (int32_t s = 0; s < (int32_t) sl.streams.size(); ++s) {
        stream & st = sl.streams[s];
        if (s < sl.n_active && sl.state == slot_state::running) {
            st.prompt = st.cached;
            st.prompt.push_back(sl.next_token);
        }
        llama_memory_seq_rm(mem, st.seq, -1, -1);
        st.cached.clear();
        sync_cells(st);
        st.copy_src  = -1;
        st.copy_upto = 0;
        st.row       = -1;
    }
    sl.state = slot_state::waiting;
    sl.n_preempted++;
    n_preemptions_++;
}

} // namespace linalign
