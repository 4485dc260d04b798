// bindings: the pybind11 module linalign._core. Declarations and argument
// conversion only; the work happens in model, engine and sampling. Calls
// that decode release the GIL.
#include "engine.h"
#include "linear_alignment_sampler.h"
#include "linear_alignment_weights.h"
#include "model.h"
#include "rpc.h"
#include "sampling.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <tuple>
#include <cstring>
#include <vector>

namespace py = pybind11;
using namespace linalign;

using float_array = py::array_t<float, py::array::c_style | py::array::forcecast>;

static py::array_t<float> to_array(std::vector<float> && values, int32_t n_vocab) {
    const py::ssize_t rows = n_vocab > 0 ? (py::ssize_t) (values.size() / n_vocab) : 0;
    py::array_t<float> out({rows, (py::ssize_t) n_vocab});
    std::copy(values.begin(), values.end(), out.mutable_data());
    return out;
}

// What the linear-alignment sampler's per-token steering is given beyond
// the logits: ratio "auto" per principled stream, the echo guard's n-gram,
// each stream's principle tokens, the tokens accepted so far, and (replay)
// the guard's decisions to apply instead of finding them.
struct steering_args {
    bool                                  auto_ratio = false;
    std::vector<bool>                     extra_auto;
    int32_t                               echo_n = 0;
    std::vector<std::vector<llama_token>> principles;
    std::vector<llama_token>              history;
    std::optional<std::vector<std::pair<int32_t, llama_token>>> guarded;
};

// Runs the linear-alignment sampler alone over full logit vectors: the unit
// under test of the sampler math. Returns the surviving ids and their logits,
// the step size applied per principled stream, and the (stream, token) pairs
// the echo guard lowered. dense: through the entry point the engine uses
// when no grammar precedes the sampler, instead of llama_sampler_apply on a
// candidate array. logits_extra and extra_ratios: further principled
// streams, composed.
static py::tuple linear_alignment_step(float_array logits_p, float_array logits_b, float ratio, float top_p,
                                       float temperature, bool dense, const std::vector<float_array> & logits_extra,
                                       const std::vector<float> & extra_ratios, const steering_args & steer) {
    if (logits_p.ndim() != 1 || logits_b.ndim() != 1 || logits_p.size() != logits_b.size() || logits_p.size() == 0) {
        throw std::invalid_argument("logits_p and logits_b must be non-empty 1-D arrays of the same length");
    }
    if (logits_extra.size() != extra_ratios.size()) {
        throw std::invalid_argument("logits_extra and extra_ratios must have the same length");
    }
    if (!steer.extra_auto.empty() && steer.extra_auto.size() != extra_ratios.size()) {
        throw std::invalid_argument("extra_auto must be empty or as long as extra_ratios");
    }
    if (steer.principles.size() > extra_ratios.size() + 1) {
        throw std::invalid_argument("principles: at most one token list per principled stream");
    }
    std::vector<const float *> extra;
    for (const float_array & a : logits_extra) {
        if (a.ndim() != 1 || a.size() != logits_p.size()) {
            throw std::invalid_argument("every logits_extra array must be 1-D and as long as logits_p");
        }
        extra.push_back(a.data());
    }
    const int32_t n_vocab = (int32_t) logits_p.size();
    static const std::vector<llama_token> none;
    const auto principle = [&](size_t k) -> const std::vector<llama_token> & {
        return k < steer.principles.size() ? steer.principles[k] : none;
    };
    llama_sampler_linear_alignment_params params{ratio, top_p, temperature};
    params.auto_ratio  = steer.auto_ratio;
    params.echo_n      = steer.echo_n;
    params.principle   = principle(0).data();
    params.n_principle = principle(0).size();
    std::vector<llama_sampler_linear_alignment_extra> extra_params;
    for (size_t k = 0; k < extra_ratios.size(); ++k) {
        const bool is_auto = k < steer.extra_auto.size() && steer.extra_auto[k];
        extra_params.push_back({extra_ratios[k], is_auto, principle(k + 1).data(), principle(k + 1).size()});
    }
    sampler_ptr owner(llama_sampler_init_linear_alignment_composed(params, extra_params.data(), extra_params.size(),
                                                                   n_vocab));
    llama_sampler * smpl = owner.get();
    for (llama_token t : steer.history) {
        llama_sampler_accept(smpl, t);
    }
    if (steer.guarded) {
        std::vector<linear_alignment_guard> guards;
        for (const auto & [stream, token] : *steer.guarded) {
            guards.push_back({stream, token});
        }
        llama_sampler_linear_alignment_set_guarded(smpl, guards.data(), guards.size());
    }
    std::vector<llama_token_data> cur(n_vocab);
    llama_token_data_array cur_p = {cur.data(), cur.size(), -1, false};
    llama_sampler_linear_alignment_set_base(smpl, logits_b.data());
    llama_sampler_linear_alignment_set_principled(smpl, extra.data(), extra.size());
    if (dense) {
        cur_p.size = llama_sampler_linear_alignment_apply_dense(smpl, logits_p.data(), cur.data());
    } else {
        linear_alignment_fill_candidates(logits_p.data(), cur.size(), cur.data());
        llama_sampler_apply(smpl, &cur_p);
    }

    py::array_t<int32_t> ids(cur_p.size);
    py::array_t<float>   out(cur_p.size);
    for (size_t i = 0; i < cur_p.size; ++i) {
        ids.mutable_data()[i] = cur_p.data[i].id;
        out.mutable_data()[i] = cur_p.data[i].logit;
    }
    size_t n_ratios = 0, n_guarded = 0;
    const float * ratios = llama_sampler_linear_alignment_applied_ratios(smpl, &n_ratios);
    const linear_alignment_guard * guarded = llama_sampler_linear_alignment_guarded(smpl, &n_guarded);
    py::list guard_list;
    for (size_t i = 0; i < n_guarded; ++i) {
        guard_list.append(py::make_tuple(guarded[i].stream, guarded[i].token));
    }
    return py::make_tuple(ids, out, std::vector<float>(ratios, ratios + n_ratios), guard_list);
}

static py::list guards_to_list(const std::vector<linear_alignment_guard> & guards) {
    py::list out;
    for (const linear_alignment_guard & g : guards) {
        out.append(py::make_tuple(g.stream, g.token));
    }
    return out;
}

// A step's or a run's events as BatchedEngine takes them, per slot, in the
// order the slots first appear: (slot, tokens, pieces, ages, plain_tops,
// ratios, guarded_at, rest). The slot's plain tokens (sampled, not ending
// anything, no logprobs asked) come as parallel lists built here, so the
// engine thread's Python touches a run of them once instead of reading a
// StepEvent's fields per token (issue 21): ratios holds one list per
// principled stream, guarded_at the indices of the tokens at which the echo
// guard acted. rest holds the slot's other events, as StepEvents, in order;
// they end its events (an end, a failure, a full context, a preemption),
// and once one came, so do the events after it (a request with logprobs).
// steps: the engine's step() or run(), called without the GIL.
template <typename Steps>
static py::list events_by_slot(Steps steps) {
    std::vector<step_event> events;
    {
        py::gil_scoped_release release;
        events = steps();
    }
    struct slot_group {
        py::list tokens, pieces, ages, plain_tops, guarded_at, rest;
        std::vector<py::list> ratios;
        int32_t slot = -1;
        int32_t n = 0;
    };
    std::vector<slot_group> groups;
    std::vector<int32_t> group_of; // slot -> index in groups, or -1
    for (step_event & ev : events) {
        if (ev.slot < 0) {
            throw std::logic_error("a step event without a slot");
        }
        if ((size_t) ev.slot >= group_of.size()) {
            group_of.resize(ev.slot + 1, -1);
        }
        if (group_of[ev.slot] < 0) {
            group_of[ev.slot] = (int32_t) groups.size();
            groups.emplace_back();
            groups.back().slot = ev.slot;
        }
        slot_group & g = groups[group_of[ev.slot]];
        const bool plain = ev.token >= 0 && !ev.eog && !ev.preempted && ev.error.empty() && !ev.has_logprob &&
                           g.rest.empty() && (g.n == 0 || g.ratios.size() == ev.ratios.size());
        if (!plain) {
            g.rest.append(py::cast(std::move(ev)));
            continue;
        }
        g.tokens.append(ev.token);
        g.pieces.append(py::bytes(ev.piece));
        g.ages.append(ev.age);
        g.plain_tops.append(ev.plain_top);
        g.ratios.resize(ev.ratios.size());
        for (size_t k = 0; k < ev.ratios.size(); ++k) {
            g.ratios[k].append(ev.ratios[k]);
        }
        if (!ev.guarded.empty()) {
            g.guarded_at.append(g.n);
        }
        g.n++;
    }
    py::list out;
    for (slot_group & g : groups) {
        py::list ratios;
        for (py::list & r : g.ratios) {
            ratios.append(r);
        }
        out.append(py::make_tuple(g.slot, g.tokens, g.pieces, g.ages, g.plain_tops, ratios, g.guarded_at, g.rest));
    }
    return out;
}

// Microseconds per combine step over given logit vectors, as the engine runs
// it when no grammar precedes the sampler (the dense entry point); with
// dense = false, a candidate fill and llama_sampler_apply, as with a grammar.
// The benchmark's "combine step alone".
static double time_combine_us(float_array logits_p, float_array logits_b, int32_t n_iter, float ratio, float top_p,
                              bool dense, bool auto_ratio) {
    if (logits_p.ndim() != 1 || logits_b.ndim() != 1 || logits_p.size() != logits_b.size() || logits_p.size() == 0) {
        throw std::invalid_argument("logits_p and logits_b must be non-empty 1-D arrays of the same length");
    }
    if (n_iter <= 0) {
        throw std::invalid_argument("n_iter must be positive");
    }
    const int32_t n_vocab = (int32_t) logits_p.size();
    const float * lp = logits_p.data();
    llama_sampler_linear_alignment_params params{ratio, top_p, 1.0f};
    params.auto_ratio = auto_ratio;
    sampler_ptr owner(llama_sampler_init_linear_alignment(params, n_vocab));
    llama_sampler * smpl = owner.get();
    llama_sampler_linear_alignment_set_base(smpl, logits_b.data());
    std::vector<llama_token_data> cur(n_vocab);
    double elapsed_us = 0.0;
    {
        py::gil_scoped_release release;
        const auto t0 = std::chrono::steady_clock::now();
        for (int32_t it = 0; it < n_iter; ++it) {
            if (dense) {
                llama_sampler_linear_alignment_apply_dense(smpl, lp, cur.data());
                continue;
            }
            linear_alignment_fill_candidates(lp, cur.size(), cur.data());
            llama_token_data_array cur_p = {cur.data(), cur.size(), -1, false};
            llama_sampler_apply(smpl, &cur_p);
        }
        elapsed_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    }
    return elapsed_us / n_iter;
}

// Saved streams from Python: (tokens, [(donor, p0, p1)...], state) each,
// the state any contiguous bytes-like object. The states are borrowed: the
// buffers in `views` keep them alive while the engine reads them.
static std::vector<stream_to_restore> streams_from_python(const py::sequence & streams,
                                                          std::vector<py::buffer_info> & views) {
    std::vector<stream_to_restore> out;
    views.reserve(py::len(streams));
    for (const py::handle item : streams) {
        py::tuple t = py::reinterpret_borrow<py::object>(item).cast<py::tuple>();
        if (t.size() != 3) {
            throw std::invalid_argument("a saved stream is (tokens, shared runs, state)");
        }
        stream_to_restore st;
        st.tokens = t[0].cast<std::vector<llama_token>>();
        for (const auto & [donor, p0, p1] : t[1].cast<std::vector<std::tuple<int32_t, int32_t, int32_t>>>()) {
            st.shared.push_back({donor, p0, p1});
        }
        views.push_back(py::reinterpret_borrow<py::buffer>(t[2]).request());
        const py::buffer_info & view = views.back();
        if (view.ndim != 1 || view.itemsize != 1 || (view.size > 1 && view.strides[0] != 1)) {
            throw std::invalid_argument("a saved stream's state must be contiguous bytes");
        }
        st.state = static_cast<const uint8_t *>(view.ptr);
        st.n_state = (size_t) view.size;
        out.push_back(std::move(st));
    }
    return out;
}

static py::list devices_to_dicts(const std::vector<device_info> & devices) {
    py::list out;
    for (const device_info & d : devices) {
        py::dict item;
        item["name"] = d.name;
        item["description"] = d.description;
        item["type"] = d.type;
        item["memory_total"] = d.memory_total;
        item["memory_free"] = d.memory_free;
        out.append(item);
    }
    return out;
}

// Frees a model that linalign loaded. Freeing weights on RPC workers waits
// for ggml-rpc's dispatcher thread, which may be inside llama.cpp's log
// callback (llama-cpp-python's, in Python) waiting for the GIL: so the GIL
// is let go first when this thread holds it (a garbage collection, a last
// reference dropped in Python), else the two wait on each other.
static void free_model(model * m) {
    if (PyGILState_Check()) {
        py::gil_scoped_release release;
        delete m;
    } else {
        delete m;
    }
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "linalign native core: linear-alignment sampler and two-stream engine over llama.cpp";

    py::class_<model, std::shared_ptr<model>>(m, "Model")
        .def(py::init([](const std::string & path, int32_t n_gpu_layers, bool use_mmap,
                         std::vector<std::string> rpc_servers, std::vector<float> tensor_split) {
                 const model_placement placement{std::move(rpc_servers), std::move(tensor_split)};
                 py::gil_scoped_release release;
                 return std::shared_ptr<model>(new model(path, n_gpu_layers, use_mmap, placement), free_model);
             }), py::arg("path"), py::arg("n_gpu_layers") = 0, py::arg("use_mmap") = true,
             py::arg("rpc_servers") = std::vector<std::string>{}, py::arg("tensor_split") = std::vector<float>{})
        .def_static("borrow", [](uintptr_t address) { return std::make_shared<model>(reinterpret_cast<llama_model *>(address)); },
                    py::arg("address"), "Wrap a llama_model owned elsewhere (a llama_cpp.Llama's), without copying weights.")
        .def_property_readonly("n_vocab", &model::n_vocab)
        .def_property_readonly("n_ctx_train", &model::n_ctx_train)
        .def_property_readonly("owns_weights", &model::owns_weights)
        .def_property_readonly("bos", &model::bos)
        .def_property_readonly("eos", &model::eos)
        .def_property_readonly("add_bos", &model::add_bos)
        .def_property_readonly("description", &model::description)
        .def_property_readonly("closed", &model::closed)
        .def_property_readonly("devices", [](const model & self) { return devices_to_dicts(self.devices()); })
        .def("tokenize", [](const model & self, py::bytes text, bool add_special, bool parse_special) {
                 return self.tokenize(std::string(text), add_special, parse_special);
             }, py::arg("text"), py::arg("add_special") = true, py::arg("parse_special") = true)
        .def("token_to_piece", [](const model & self, llama_token token, bool special) {
                 return py::bytes(self.token_to_piece(token, special));
             }, py::arg("token"), py::arg("special") = false)
        .def("is_eog", &model::is_eog, py::arg("token"))
        .def("meta", &model::meta, py::arg("key"))
        .def("chat_template", &model::chat_template)
        .def("close", &model::close, py::call_guard<py::gil_scoped_release>());

    py::class_<sampling_params>(m, "SamplingParams")
        .def(py::init<>())
        .def_readwrite("ratio", &sampling_params::ratio)
        .def_readwrite("top_p", &sampling_params::top_p)
        .def_readwrite("temperature", &sampling_params::temperature)
        .def_readwrite("top_k", &sampling_params::top_k)
        .def_readwrite("min_p", &sampling_params::min_p)
        .def_readwrite("repeat_penalty", &sampling_params::repeat_penalty)
        .def_readwrite("frequency_penalty", &sampling_params::frequency_penalty)
        .def_readwrite("presence_penalty", &sampling_params::presence_penalty)
        .def_readwrite("penalty_last_n", &sampling_params::penalty_last_n)
        .def_readwrite("seed", &sampling_params::seed)
        .def_readwrite("extra_ratios", &sampling_params::extra_ratios,
                       "ratios of the principled streams after P (several principles composed)")
        .def_readwrite("auto_ratio", &sampling_params::auto_ratio, "P's ratio is set per token (ratio 'auto')")
        .def_readwrite("extra_auto_ratio", &sampling_params::extra_auto_ratio,
                       "per extra principled stream: 1 when its ratio is 'auto' (empty: none)")
        .def_readwrite("echo_n", &sampling_params::echo_n, "the echo guard's n-gram length (0: off)")
        .def_readwrite("principle_tokens", &sampling_params::principle_tokens,
                       "each principled stream's principle as tokens, P first (for the echo guard)")
        .def_readwrite("grammar", &sampling_params::grammar)
        .def_readwrite("grammar_root", &sampling_params::grammar_root)
        .def_readwrite("grammar_triggers", &sampling_params::grammar_triggers,
                       "regular expressions that start a lazy grammar (empty: it constrains from the first token)")
        .def_readwrite("align_grammar", &sampling_params::align_grammar,
                       "whether the alignment steers the tokens the grammar constrains (false: P alone there)")
        .def_readwrite("n_logprobs", &sampling_params::n_logprobs,
                       "alternatives in each sampled token's logprob entry, in [0, 20]; -1: no entries")
        .def("validate", &sampling_params::validate);

    py::class_<prefill_stats>(m, "PrefillStats")
        .def_property_readonly("reused", [](const prefill_stats & s) { return py::tuple(py::cast(s.reused)); })
        .def_property_readonly("decoded", [](const prefill_stats & s) { return py::tuple(py::cast(s.decoded)); })
        .def_property_readonly("cached", [](const prefill_stats & s) { return py::tuple(py::cast(s.cached)); })
        .def_readonly("shared", &prefill_stats::shared);

    py::class_<step_event>(m, "StepEvent")
        .def_readonly("slot", &step_event::slot)
        .def_readonly("token", &step_event::token, "the token sampled; -1 when the slot's context is full")
        .def_readonly("error", &step_event::error, "why the slot's sampler failed, or empty")
        .def_readonly("ratios", &step_event::ratios, "the step size each principled stream was applied at, P first")
        .def_property_readonly("guarded", [](const step_event & e) { return guards_to_list(e.guarded); },
                               "(stream, token) pairs the echo guard took out at this step")
        .def_readonly("plain_top", &step_event::plain_top,
                      "the base stream's most likely token (among what a grammar allowed); -1 without a base stream")
        .def_readonly("preempted", &step_event::preempted,
                      "the pool was full: the slot's cells were freed and its request waits to resume")
        .def_property_readonly("piece", [](const step_event & e) { return py::bytes(e.piece); },
                               "the token's bytes (special tokens unrendered)")
        .def_readonly("eog", &step_event::eog, "the token ends generation (an EOG token of the vocabulary)")
        .def_readonly("stop_seen", &step_event::stop_seen, "the request's bytes now hold one of its stop strings")
        .def_readonly("age", &step_event::age,
                      "seconds from the end of its step to the return of the call that returned it")
        .def_property_readonly("logprob", [](const step_event & e) -> py::object {
                                   if (!e.has_logprob) {
                                       return py::none();
                                   }
                                   const token_logprob & lp = e.logprob;
                                   py::list top;
                                   for (size_t i = 0; i < lp.top.size(); ++i) {
                                       top.append(py::make_tuple(py::bytes(e.top_pieces[i]), lp.top_logprobs[i]));
                                   }
                                   return py::make_tuple(lp.logprob, py::tuple(top), lp.plain_top_token,
                                                         py::bytes(e.plain_top_piece), lp.plain_top_logprob,
                                                         lp.logprob_principled, lp.logprob_plain, lp.ratio,
                                                         lp.echo_guarded);
                               },
                               "None unless the request asked for logprobs; else (logprob, ((piece, logprob), ...), "
                               "plain_top_token, plain_top_piece, plain_top_logprob, logprob_principled, "
                               "logprob_plain, ratio, echo_guarded): linalign.logprobs.TokenLogprob's fields");

    py::class_<sampler_chain>(m, "SamplerChain",
                              "A request's sampler chain on its own, for baselines and tests: "
                              "[grammar] -> linear-alignment -> penalties -> top-k -> min-p -> temperature -> dist")
        .def(py::init([](const sampling_params & params, const model & mdl) {
                 return std::make_unique<sampler_chain>(params, mdl.vocab());
             }), py::arg("params"), py::arg("model"))
        .def("sample", [](sampler_chain & self, float_array logits_p, py::object logits_b, int32_t n_vocab,
                          const std::vector<float_array> & logits_extra) {
                 if (logits_p.ndim() != 1 || logits_p.size() != n_vocab) {
                     throw std::invalid_argument("logits_p must be a 1-D array of n_vocab floats");
                 }
                 std::vector<const float *> extra;
                 for (const float_array & a : logits_extra) {
                     if (a.ndim() != 1 || a.size() != n_vocab) {
                         throw std::invalid_argument("every logits_extra array must be 1-D, of n_vocab floats");
                     }
                     extra.push_back(a.data());
                 }
                 if (logits_b.is_none()) {
                     py::gil_scoped_release release;
                     return self.sample(logits_p.data(), nullptr, extra.data(), extra.size());
                 }
                 float_array base = logits_b.cast<float_array>();
                 if (base.ndim() != 1 || base.size() != n_vocab) {
                     throw std::invalid_argument("logits_b must be a 1-D array of n_vocab floats");
                 }
                 py::gil_scoped_release release;
                 return self.sample(logits_p.data(), base.data(), extra.data(), extra.size());
             }, py::arg("logits_p"), py::arg("logits_b"), py::arg("n_vocab"),
             py::arg("logits_extra") = std::vector<float_array>(),
             "Runs the chain over P's logits steered by B's (None: no base stream), and by the further "
             "principled streams' when the parameters compose several, and accepts the token.")
        .def("set_threads", [](sampler_chain & self, int32_t n_threads) {
                 if (n_threads < 1) {
                     throw std::invalid_argument("n_threads must be >= 1");
                 }
                 self.set_threads(n_threads);
             }, py::arg("n_threads"),
             "Threads of the calling thread's OpenMP team that greedy's scans may take (1: the calling thread "
             "alone), as the engine sets them for a step that samples one slot.")
        .def_property_readonly("applied_ratios", &sampler_chain::applied_ratios,
                               "the last sample's step size per principled stream, P first")
        .def_property_readonly("guarded", [](const sampler_chain & self) { return guards_to_list(self.guarded()); },
                               "the last sample's (stream, token) pairs the echo guard took out");

    py::class_<engine>(m, "Engine")
        .def(py::init([](std::shared_ptr<model> mdl, int32_t n_ctx, int32_t n_slots, int32_t n_batch, int32_t n_threads,
                         int32_t n_threads_batch, int32_t flash_attn, bool kv_unified, int32_t n_streams,
                         int32_t n_cells, int32_t reserve_tokens, bool count_passes) {
                 engine_params p;
                 p.n_ctx = n_ctx;
                 p.n_slots = n_slots;
                 p.n_batch = n_batch;
                 p.n_threads = n_threads;
                 p.n_threads_batch = n_threads_batch;
                 p.flash_attn = flash_attn;
                 p.kv_unified = kv_unified;
                 p.n_streams = n_streams;
                 p.n_cells = n_cells;
                 p.reserve_tokens = reserve_tokens;
                 p.count_passes = count_passes;
                 return new engine(std::move(mdl), p);
             }), py::arg("model"), py::arg("n_ctx") = 4096, py::arg("n_slots") = 1, py::arg("n_batch") = 512,
             py::arg("n_threads") = 0, py::arg("n_threads_batch") = 0, py::arg("flash_attn") = 0,
             py::arg("kv_unified") = true, py::arg("n_streams") = 2, py::arg("n_cells") = 0,
             py::arg("reserve_tokens") = 256, py::arg("count_passes") = false, py::call_guard<py::gil_scoped_release>(),
             "n_ctx: the most tokens one stream may hold; n_streams: streams per slot (P, B and one per further "
             "principle); kv_unified: one pool of n_cells KV cells (0: 2 x n_ctx x n_slots) for every stream, else "
             "n_ctx cells per stream of every slot; count_passes: count llama.cpp's forward passes (an eval "
             "callback that makes a GPU synchronize after every graph split: for measuring only).")
        .def("pick_slot", &engine::pick_slot, py::arg("prompts"),
             "The free slot with the longest cached prefix of the prompts (P, B, further principled ones), or -1.")
        .def("start", &engine::start, py::arg("slot"), py::arg("prompts"), py::arg("params"),
             py::arg("cache_prompt") = true, py::arg("max_tokens") = 0, py::arg("stops") = std::vector<std::string>(),
             py::call_guard<py::gil_scoped_release>(),
             "Starts a request: prompts are P, B, then one per params.extra_ratios. Without room in the KV pool it "
             "waits in its slot and a later step starts it. stops: its stop strings, which run() watches for.")
        .def("room_for", &engine::room_for, py::arg("slot"), py::arg("prompts"), py::arg("params"),
             py::arg("cache_prompt") = true, py::arg("max_tokens") = 0,
             "Whether the KV pool has room now for the request's prompts' cells and its reserve.")
        .def("check_fits", &engine::check_fits, py::arg("prompts"), py::arg("params"),
             "Raises ValueError when the prompts' cells alone exceed the KV pool.")
        .def("cells_alone", &engine::cells_alone, py::arg("prompts"), py::arg("params"),
             "The KV cells the prompts' streams hold once prefilled in an empty slot (a shared prefix once).")
        .def("cells_to_start", &engine::cells_to_start, py::arg("prompts"), py::arg("params"),
             py::arg("max_tokens") = 0,
             "Those cells and the reserve admission keeps for the answer: what a request needs free to start alone.")
        .def("waiting", &engine::waiting, py::arg("slot"))
        .def("step", &engine::step, py::call_guard<py::gil_scoped_release>(),
             "One llama_decode over every busy slot, then a token for each slot whose logits are in.")
        .def("run", &engine::run, py::arg("budget_us"), py::arg("seen"), py::call_guard<py::gil_scoped_release>(),
             "Steps while nothing needs the caller, within about budget_us, and returns every step's events: after "
             "a step whose events end, fail, preempt or start a request, reach its max_tokens or see a stop string, "
             "or after any step once interrupt() was called since n_interrupts was seen.")
        .def("step_by_slot", [](engine & self) { return events_by_slot([&] { return self.step(); }); },
             "step()'s events grouped per slot: (slot, tokens, pieces, ages, plain_tops, ratios, guarded_at, rest), "
             "the slot's plain tokens as lists and its other events (rest) as StepEvents.")
        .def("run_by_slot", [](engine & self, int64_t budget_us, uint64_t seen) {
                 return events_by_slot([&] { return self.run(budget_us, seen); });
             }, py::arg("budget_us"), py::arg("seen"), "run()'s events grouped per slot, as step_by_slot's.")
        .def("interrupt", &engine::interrupt, "Makes a run() in progress return after its step (any thread).")
        .def_property_readonly("n_interrupts", &engine::n_interrupts)
        .def("finish", &engine::finish, py::arg("slot"))
        .def("logits", [](const engine & self, int32_t slot, int32_t stream) {
                 const int32_t n_vocab = self.get_model().n_vocab();
                 const float * src = self.logits(slot, stream);
                 return to_array(std::vector<float>(src, src + n_vocab), n_vocab).reshape({(py::ssize_t) n_vocab});
             }, py::arg("slot"), py::arg("stream"),
             "A copy of the logits a slot's stream (0: P, 1: B) sampled from at the last step.")
        .def("grammar_allowed", [](const engine & self, int32_t slot) -> py::object {
                 const std::vector<llama_token> * allowed = self.grammar_allowed(slot);
                 if (allowed == nullptr) {
                     return py::none();
                 }
                 return py::array_t<llama_token>((py::ssize_t) allowed->size(), allowed->data());
             }, py::arg("slot"),
             "The token ids a slot's grammar allowed at the last step (ascending), or None without a grammar.")
        .def("eval_logits", [](engine & self, int32_t slot, const std::vector<llama_token> & prompt,
                               const std::vector<llama_token> & base_prompt, int32_t n_tail_p, int32_t n_tail_b) {
                 std::vector<float> out_p, out_b;
                 {
                     py::gil_scoped_release release;
                     self.eval_logits(slot, prompt, base_prompt, n_tail_p, n_tail_b, out_p, out_b);
                 }
                 const int32_t n_vocab = self.get_model().n_vocab();
                 return py::make_tuple(to_array(std::move(out_p), n_vocab), to_array(std::move(out_b), n_vocab));
             }, py::arg("slot"), py::arg("prompt"), py::arg("base_prompt"), py::arg("n_tail_p") = 1, py::arg("n_tail_b") = 1)
        .def("save_slot", [](engine & self, int32_t slot) {
                 std::vector<saved_stream> saved;
                 {
                     py::gil_scoped_release release;
                     saved = self.save_slot(slot);
                 }
                 py::list out;
                 for (const saved_stream & st : saved) {
                     py::list runs;
                     for (const shared_run & run : st.shared) {
                         runs.append(py::make_tuple(run.donor, run.p0, run.p1));
                     }
                     out.append(py::make_tuple(py::cast(st.tokens), runs,
                                               py::bytes(reinterpret_cast<const char *>(st.state.data()), st.state.size())));
                 }
                 return out;
             }, py::arg("slot"),
             "A free slot's prompt cache: per stream (tokens, [(donor, p0, p1) shared runs], llama.cpp's state bytes).")
        .def("check_saved", [](const engine & self, const py::sequence & streams) {
                 std::vector<py::buffer_info> views;
                 self.check_saved(streams_from_python(streams, views));
             }, py::arg("streams"), "Raises ValueError for saved streams that restore_slot would refuse.")
        .def("cells_of_saved", [](const engine & self, const py::sequence & streams) {
                 std::vector<py::buffer_info> views;
                 return self.cells_of_saved(streams_from_python(streams, views));
             }, py::arg("streams"), "The KV cells saved streams hold once restored (a shared run once).")
        .def("restore_slot", [](engine & self, int32_t slot, const py::sequence & streams) {
                 std::vector<py::buffer_info> views;
                 const std::vector<stream_to_restore> parsed = streams_from_python(streams, views);
                 py::gil_scoped_release release;
                 return self.restore_slot(slot, parsed);
             }, py::arg("slot"), py::arg("streams"),
             "Replaces a free slot's prompt cache with saved streams (as save_slot gives them); returns P's tokens.")
        .def("erase_slot", &engine::erase_slot, py::arg("slot"), "Forgets a free slot's prompt cache; returns P's tokens.")
        .def_property_readonly("kv_type_k", &engine::kv_type_k)
        .def_property_readonly("kv_type_v", &engine::kv_type_v)
        .def_property_readonly("flash_attn", [](const engine & self) { return self.params().flash_attn; })
        .def("clear", &engine::clear)
        .def("close", &engine::close)
        .def_property_readonly("closed", &engine::closed)
        .def_property_readonly("n_ctx", &engine::n_ctx)
        .def_property_readonly("n_slots", &engine::n_slots)
        .def_property_readonly("n_batch", &engine::n_batch)
        .def_property_readonly("n_streams", &engine::n_streams)
        .def_property_readonly("n_busy", &engine::n_busy)
        .def("busy", &engine::busy, py::arg("slot"))
        .def("n_past", &engine::n_past, py::arg("slot"), py::arg("stream"))
        .def("n_active_streams", &engine::n_active_streams, py::arg("slot"))
        .def("last_prefill", &engine::last_prefill, py::arg("slot"))
        .def_property_readonly("n_decode_calls", &engine::n_decode_calls)
        .def_property_readonly("decode_seconds", &engine::decode_seconds)
        .def_property_readonly("n_forward_passes", [](const engine & self) -> py::object {
                                   if (!self.counts_passes()) {
                                       return py::none();
                                   }
                                   return py::int_(self.n_forward_passes());
                               }, "forward passes llama.cpp ran; None unless made with count_passes=True")
        .def_property_readonly("counts_passes", &engine::counts_passes)
        .def_property_readonly("kv_unified", [](const engine & self) { return self.params().kv_unified; })
        .def_property_readonly("n_cells_total", &engine::n_cells_total)
        .def_property_readonly("n_cells_used", &engine::n_cells_used)
        .def_property_readonly("n_cells_idle", &engine::n_cells_idle)
        .def_property_readonly("n_waiting", &engine::n_waiting)
        .def_property_readonly("n_preemptions", &engine::n_preemptions);

    m.def("rpc_available", &rpc_available, "Whether this libggml has llama.cpp's RPC backend (-DGGML_RPC=ON).");
    m.def("rpc_protocol_version", &rpc_protocol_version, "(major, minor, patch) of this libggml's RPC protocol.");
    m.def("rpc_worker_devices", [](const std::vector<std::string> & endpoints) {
              std::vector<device_info> out;
              {
                  py::gil_scoped_release release;
                  for (ggml_backend_dev_t dev : rpc_worker_devices(endpoints)) {
                      out.push_back(describe_device(dev));
                  }
              }
              return devices_to_dicts(out);
          }, py::arg("endpoints"),
          "The devices of each RPC worker (connects to each: check them first, ggml-rpc aborts on a failed connection).");
    m.def("rpc_held", &rpc_held, "RPC workers this process's models are connected to (one connection per worker).");
    m.def("rpc_serve", &rpc_serve, py::arg("endpoint"), py::arg("cache_dir"), py::arg("n_threads"), py::arg("devices"),
          py::call_guard<py::gil_scoped_release>(),
          "Serves this process's devices to RPC clients; returns only by raising, when it cannot start.");
    m.def("local_devices", []() { return devices_to_dicts(local_devices()); },
          "ggml's registered devices (RPC workers are never registered) with their memory.");
    m.def("cpu_has_amx_weight_buffers", &cpu_has_amx_weight_buffers,
          "True when llama.cpp would put CPU weights in AMX buffers, whose matrix product crashes on some machines "
          "(llama.cpp issue 20824): linalign then loads weights without extra buffer types.");
    const auto step = [](float_array logits_p, float_array logits_b, float ratio, float top_p, float temperature,
                         bool dense, const std::vector<float_array> & logits_extra,
                         const std::vector<float> & extra_ratios, bool auto_ratio, const std::vector<bool> & extra_auto,
                         int32_t echo_n, const std::vector<std::vector<llama_token>> & principles,
                         const std::vector<llama_token> & history,
                         std::optional<std::vector<std::pair<int32_t, llama_token>>> guarded) {
        steering_args steer{auto_ratio, extra_auto, echo_n, principles, history, std::move(guarded)};
        return linear_alignment_step(logits_p, logits_b, ratio, top_p, temperature, dense, logits_extra, extra_ratios,
                                     steer);
    };
#define LINALIGN_STEP_ARGS                                                                                         \
    py::arg("logits_p"), py::arg("logits_b"), py::arg("ratio"), py::arg("top_p"), py::arg("temperature") = 1.0f,   \
        py::arg("dense") = false, py::arg("logits_extra") = std::vector<float_array>(),                            \
        py::arg("extra_ratios") = std::vector<float>(), py::kw_only(), py::arg("auto_ratio") = false,              \
        py::arg("extra_auto") = std::vector<bool>(), py::arg("echo_n") = 0,                                        \
        py::arg("principles") = std::vector<std::vector<llama_token>>(),                                           \
        py::arg("history") = std::vector<llama_token>(), py::arg("guarded") = py::none()
    m.def("linear_alignment_step", step, LINALIGN_STEP_ARGS,
          "One apply of the linear-alignment sampler alone: (ids, logits) of the kept candidates, the step size "
          "applied per principled stream, and the (stream, token) pairs the echo guard took out. history: tokens "
          "accepted before it; guarded: replay these guard decisions instead of finding them.");
    m.def("linear_alignment_apply", [step](float_array logits_p, float_array logits_b, float ratio, float top_p,
                                           float temperature, bool dense, const std::vector<float_array> & logits_extra,
                                           const std::vector<float> & extra_ratios, bool auto_ratio,
                                           const std::vector<bool> & extra_auto, int32_t echo_n,
                                           const std::vector<std::vector<llama_token>> & principles,
                                           const std::vector<llama_token> & history,
                                           std::optional<std::vector<std::pair<int32_t, llama_token>>> guarded) {
              py::tuple r = step(logits_p, logits_b, ratio, top_p, temperature, dense, logits_extra, extra_ratios,
                                 auto_ratio, extra_auto, echo_n, principles, history, std::move(guarded));
              return py::make_tuple(r[0], r[1]);
          }, LINALIGN_STEP_ARGS, "linear_alignment_step's (ids, logits).");
#undef LINALIGN_STEP_ARGS
    m.attr("AUTO_RATIO_FLOOR") = LINEAR_ALIGNMENT_AUTO_FLOOR;
    m.attr("AUTO_RATIO_SCALE") = LINEAR_ALIGNMENT_AUTO_SCALE;
    m.attr("AUTO_RATIO_MAX") = LINEAR_ALIGNMENT_AUTO_MAX;
    // the vocabulary scans of greedy decoding, on arrays of any length: for
    // tests of their edges (ties across lanes, tails, NaN, -inf)
    m.def("scan_argmax", [](float_array logits) {
              if (logits.ndim() != 1 || logits.size() == 0) {
                  throw std::invalid_argument("logits must be a non-empty 1-D array");
              }
              return linear_alignment_argmax(logits.data(), (size_t) logits.size());
          }, py::arg("logits"),
          "The sampler's argmax: the first index of the largest logit (numpy's for finite values).");
    m.def("scan_best_combined", [](float_array logits_p, float_array logits_b, float ratio,
                                   std::optional<float_array> weight, float threshold) {
              const py::ssize_t n = logits_p.size();
              if (logits_p.ndim() != 1 || logits_b.ndim() != 1 || logits_b.size() != n ||
                  (weight && (weight->ndim() != 1 || weight->size() != n))) {
                  throw std::invalid_argument("logits_p, logits_b and weight must be 1-D arrays of one length");
              }
              return linear_alignment_best_combined(logits_p.data(), logits_b.data(), ratio,
                                                    weight ? weight->data() : nullptr, (size_t) n, threshold);
          }, py::arg("logits_p"), py::arg("logits_b"), py::arg("ratio"), py::arg("weight"), py::arg("threshold"),
          "Greedy's scan: the first index of the largest (1 + ratio) l_p - ratio l_b among the tokens of weight >= "
          "threshold (every token when weight is None), or -1.");
    m.def("scan_approx_masses", [](float_array logits, float max_logit, float inv_t, float logit_min) {
              if (logits.ndim() != 1) {
                  throw std::invalid_argument("logits must be a 1-D array");
              }
              double all = 0.0, at_least = 0.0;
              linear_alignment_approx_masses(logits.data(), (size_t) logits.size(), max_logit, inv_t, logit_min, &all,
                                             &at_least);
              return py::make_tuple(all, at_least);
          }, py::arg("logits"), py::arg("max_logit"), py::arg("inv_t"), py::arg("logit_min"),
          "Greedy's quick bounds: the sums of the approximate exp((logit - max_logit) inv_t) over every token and over "
          "those of logit >= logit_min; the exact sums lie within [APPROX_LOW, APPROX_HIGH] times them.");
    m.attr("APPROX_LOW") = LINEAR_ALIGNMENT_APPROX_LOW;
    m.attr("APPROX_HIGH") = LINEAR_ALIGNMENT_APPROX_HIGH;
    m.def("time_combine_us", &time_combine_us, py::arg("logits_p"), py::arg("logits_b"), py::arg("n_iter") = 200,
          py::arg("ratio") = 2.0f, py::arg("top_p") = 0.8f, py::arg("dense") = true, py::arg("auto_ratio") = false);
}
