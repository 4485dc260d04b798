// slot_state: a free slot's prompt cache taken out of the context and put
// back, as llama.cpp's per-sequence states (llama_state_seq_get_data /
// set_data), for slot files (docs/slot_files.md; the file format itself is
// python/linalign/engine/slot_files.py). Each stream of a slot is a llama
// sequence; in the pool, cells that streams share are saved once.
#include "engine.h"

#include <stdexcept>
#include <string>

namespace linalign {

// Positions of stream s whose cells are an earlier stream's (the first such
// stream at each position), as runs. A stream takes a shared range from its
// donor at the same positions (take_shared_prefix), so a shared cell lies
// under the same position in both. Nothing is shared with a buffer per stream.
std::vector<shared_run> engine::shared_runs(const slot & sl, int32_t s) const {
    std::vector<shared_run> runs;
    if (!params_.kv_unified) {
        return runs;
    }
    const stream & st = sl.streams[s];
    for (int32_t i = 0; i < (int32_t) st.cells.size(); ++i) {
        int32_t donor = -1;
        for (int32_t d = 0; d < s && donor < 0; ++d) {
            const stream & other = sl.streams[d];
            if (i < (int32_t) other.cells.size() && other.cells[i] == st.cells[i]) {
                donor = d;
            }
        }
        if (donor < 0) {
            continue;
        }
        if (!runs.empty() && runs.back().donor == donor && runs.back().p1 == i) {
            runs.back().p1 = i + 1;
        } else {
            runs.push_back({donor, i, i + 1});
        }
    }
    return runs;
}

std::vector<saved_stream> engine::save_slot(int32_t slot_index) {
    slot & sl = slot_at(slot_index);
    if (sl.state != slot_state::free) {
        throw std::invalid_argument("slot " + std::to_string(slot_index) + " is busy: save it once its request is done");
    }
    llama_context * ctx = ctx_.get();
    llama_memory_t mem = llama_get_memory(ctx);
    int32_t n = (int32_t) sl.streams.size();
    while (n > 0 && sl.streams[n - 1].cached.empty()) {
        --n;
    }
    std::vector<saved_stream> out(n);
    for (int32_t s = 0; s < n; ++s) {
        const stream & st = sl.streams[s];
        if (llama_memory_seq_pos_max(mem, st.seq) != (llama_pos) st.cached.size() - 1) {
            throw std::runtime_error("slot " + std::to_string(slot_index) + "'s stream " + std::to_string(s) +
                                     " does not hold what the engine recorded; nothing was saved");
        }
        saved_stream & saved = out[s];
        saved.tokens = st.cached;
        if (st.cached.empty()) {
            continue;  // nothing to restore: no state
        }
        // The shared runs leave the sequence for the copy (their cells stay,
        // held by the donor) and come back after, the same cells again. A
        // memory that cannot drop a range (a recurrent state) keeps it, and
        // the stream is saved whole.
        for (const shared_run & run : shared_runs(sl, s)) {
            if (llama_memory_seq_rm(mem, st.seq, run.p0, run.p1)) {
                saved.shared.push_back(run);
            }
        }
        const size_t size = llama_state_seq_get_size(ctx, st.seq);
        saved.state.resize(size);
        const size_t written = llama_state_seq_get_data(ctx, saved.state.data(), size, st.seq);
        for (const shared_run & run : saved.shared) {
            llama_memory_seq_cp(mem, sl.streams[run.donor].seq, st.seq, run.p0, run.p1);
        }
        if (written != size) {
            throw std::runtime_error("llama.cpp wrote " + std::to_string(written) + " bytes of stream " +
                                     std::to_string(s) + "'s state, not " + std::to_string(size));
        }
    }
    return out;
}

void engine::check_saved(const std::vector<stream_to_restore> & streams) const {
    require_open();
    if (streams.size() > (size_t) params_.n_streams) {
        throw std::invalid_argument("the saved slot holds " + std::to_string(streams.size()) + " streams; this "
                                    "engine's slots hold " + std::to_string(params_.n_streams) +
                                    " (allow more principles per request: max_principles, --max-principles)");
    }
    for (size_t s = 0; s < streams.size(); ++s) {
        const stream_to_restore & st = streams[s];
        const std::string name = "saved stream " + std::to_string(s);
        if ((int64_t) st.tokens.size() > params_.n_ctx) {
            throw std::invalid_argument(name + " holds " + std::to_string(st.tokens.size()) +
                                        " tokens, more than this engine's n_ctx of " + std::to_string(params_.n_ctx));
        }
        for (llama_token t : st.tokens) {
            model_->check_token(t);
        }
        if (st.tokens.empty() != (st.n_state == 0)) {
            throw std::invalid_argument(name + ": a state goes with tokens, and none without");
        }
        if (!params_.kv_unified && !st.shared.empty()) {
            throw std::invalid_argument(name + " shares cells with another stream, which a KV buffer per stream "
                                        "cannot (it was saved from the pool)");
        }
        int32_t last = 0;
        for (const shared_run & run : st.shared) {
            if (run.donor < 0 || (size_t) run.donor >= s) {
                throw std::invalid_argument(name + ": a shared run's donor must be an earlier stream");
            }
            const std::vector<llama_token> & donor = streams[run.donor].tokens;
            if (run.p0 < last || run.p0 >= run.p1 || (size_t) run.p1 > st.tokens.size() ||
                (size_t) run.p1 > donor.size()) {
                throw std::invalid_argument(name + ": shared runs must be ordered, apart, and within both streams");
            }
            for (int32_t i = run.p0; i < run.p1; ++i) {
                if (st.tokens[i] != donor[i]) {
                    throw std::invalid_argument(name + ": a shared run holds other tokens than its donor's");
                }
            }
            last = run.p1;
        }
    }
}

int64_t engine::cells_of_saved(const std::vector<stream_to_restore> & streams) const {
    int64_t n = 0;
    for (const stream_to_restore & st : streams) {
        n += (int64_t) st.tokens.size();
        for (const shared_run & run : st.shared) {
            n -= run.p1 - run.p0;
        }
    }
    return n;
}

void engine::forget_slot(slot & sl) {
    llama_memory_t mem = llama_get_memory(ctx_.get());
    for (stream & st : sl.streams) {
        llama_memory_seq_rm(mem, st.seq, -1, -1);
        st.cached.clear();
        sync_cells(st);
    }
}

int32_t engine::restore_slot(int32_t slot_index, const std::vector<stream_to_restore> & streams) {
    slot & sl = slot_at(slot_index);
    if (sl.state != slot_state::free) {
        throw std::invalid_argument("slot " + std::to_string(slot_index) + " is busy: restore it once its request is done");
    }
    check_saved(streams);
    const int64_t need = cells_of_saved(streams);
    if (params_.kv_unified && need > n_cells_total_) {
        throw std::invalid_argument("the saved slot holds " + std::to_string(need) + " KV cells, more than the pool's " +
                                    std::to_string(n_cells_total_) + " (give it more: kv_cells, --kv-cells)");
    }
    if (params_.kv_unified) {
        // what the pool has once this slot's cache and then the idle slots' make way
        int64_t idle = 0;
        for (const slot & other : slots_) {
            idle += other.state == slot_state::free ? other.n_cells : 0;
        }
        if (n_cells_free() + idle < need) {
            throw std::invalid_argument("the saved slot holds " + std::to_string(need) + " KV cells; the requests "
                                        "running leave " + std::to_string(n_cells_free() + idle) + " of the pool's " +
                                        std::to_string(n_cells_total_) + " free: restore it when they are done");
        }
    }
    forget_slot(sl);
    while (params_.kv_unified && n_cells_free() < need && free_lru_idle_cache()) {
    }

    llama_context * ctx = ctx_.get();
    llama_memory_t mem = llama_get_memory(ctx);
    for (size_t s = 0; s < streams.size(); ++s) {
        const stream_to_restore & saved = streams[s];
        stream & st = sl.streams[s];
        if (saved.tokens.empty()) {
            continue;
        }
        const int32_t n = (int32_t) saved.tokens.size();
        const size_t read = llama_state_seq_set_data(ctx, saved.state, saved.n_state, st.seq);
        for (const shared_run & run : saved.shared) {
            llama_memory_seq_cp(mem, sl.streams[run.donor].seq, st.seq, run.p0, run.p1);
        }
        if (read != saved.n_state || llama_memory_seq_pos_max(mem, st.seq) != n - 1 ||
            !memory_holds_prefix(ctx, st.seq, n)) {
            forget_slot(sl);
            publish_cells();
            throw std::runtime_error("llama.cpp could not restore saved stream " + std::to_string(s) +
                                     (read == 0 ? " (it refused the state: see its log)"
                                                : " (the state does not hold the positions its tokens say)") +
                                     "; the slot was left empty");
        }
        st.cached = saved.tokens;
        st.cells.clear();
        size_t next_run = 0;
        for (int32_t i = 0; i < n; ++i) {
            while (next_run < saved.shared.size() && saved.shared[next_run].p1 <= i) {
                ++next_run;
            }
            if (next_run < saved.shared.size() && saved.shared[next_run].p0 <= i) {
                const uint32_t id = sl.streams[saved.shared[next_run].donor].cells.at(i);
                cell_refs_[id]++;
                st.cells.push_back(id);
            } else {
                st.cells.push_back(new_cell(sl));
            }
        }
    }
    sl.last_used = ++clock_;
    publish_cells();
    return streams.empty() ? 0 : (int32_t) streams[STREAM_P].tokens.size();
}

int32_t engine::erase_slot(int32_t slot_index) {
    slot & sl = slot_at(slot_index);
    if (sl.state != slot_state::free) {
        throw std::invalid_argument("slot " + std::to_string(slot_index) + " is busy: erase it once its request is done");
    }
    const int32_t n = (int32_t) sl.streams[STREAM_P].cached.size();
    forget_slot(sl);
    publish_cells();
    return n;
}

} // namespace linalign
