"""Slot files (docs/slot_files.md): a slot's prompt cache saved and restored,
by Aligner.save_state/load_state and by ``linalign serve --slot-save-path``'s
``POST /slots/{id}?action=save|restore|erase``; every bad file refused
before the KV cache is touched."""
from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import linalign
from conftest import (CLOSENESS_RATIO, LOGPROB_TOL, POOL_LOGPROB_TOL, TOP_ENTRIES, assert_same_greedy_decoding, entries_of_chat_response,
                      entries_of_generation)
from linalign.engine import SlotBusyError, SlotFileError
from linalign.engine.slot_files import MAGIC, model_fingerprint
from test_server import Server

PRINCIPLE = "The user is a five-year-old child."
FIRST = [{"role": "user", "content": "Why is the sky blue?"}]
GREEDY = dict(ratio=CLOSENESS_RATIO, temperature=0.0, top_k=40, repeat_penalty=1.0)


def make_aligner(model_path, **kw) -> linalign.Aligner:
    return linalign.Aligner(model_path, n_ctx=1024, n_threads=2, seed=0, **kw)


def first_turn(aligner: linalign.Aligner) -> list[dict]:
    """Answers FIRST; returns the conversation with a next question."""
    answer = aligner.create_chat_completion(FIRST, principle=PRINCIPLE, max_tokens=16, **GREEDY)
    return FIRST + [{"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
                    {"role": "user", "content": "And why is it red at sunset?"}]


def next_turn(aligner: linalign.Aligner, messages: list[dict]) -> tuple[list[tuple], int]:
    """The next turn's logprob entries (greedy) and its cached_tokens."""
    gen = aligner.submit(aligner.chat_request(messages, principle=PRINCIPLE, max_tokens=12, logprobs=True,
                                              top_logprobs=TOP_ENTRIES, **GREEDY))
    while not gen.done:
        aligner.engine.step()
    return entries_of_generation(gen), gen.cached_tokens


@pytest.fixture(scope="module")
def saved(model_path, tmp_path_factory) -> tuple[Path, list[dict]]:
    """A slot file of the pool's slot 0 after one turn, and the next turn's conversation."""
    path = tmp_path_factory.mktemp("slots") / "turn1.slot"
    with make_aligner(model_path) as a:
        messages = first_turn(a)
        a.save_state(path)
    return path, messages


@pytest.fixture(scope="module")
def pool_aligner(model_path):
    with make_aligner(model_path) as a:
        yield a


# -- the round trip -------------------------------------------------------------

# In the pool a restored stream's cells lie elsewhere than the saved one's
# (each stream's own cells together, where they were interleaved as decoded):
# its logits move by the pool's rounding (conftest.POOL_LOGPROB_TOL). With a
# buffer per stream cell i holds position i again: the same logits.
@pytest.mark.parametrize("kv_unified, tol", [(False, LOGPROB_TOL), (True, POOL_LOGPROB_TOL)],
                         ids=["per-stream", "pool"])
def test_restored_slot_continues_the_conversation_as_the_saved_one(model_path, tmp_path, kv_unified, tol):
    path = tmp_path / "turn1.slot"
    with make_aligner(model_path, kv_unified=kv_unified) as a:
        messages = first_turn(a)
        a.save_state(path)
        warm, warm_cached = next_turn(a, messages)
    with make_aligner(model_path, kv_unified=kv_unified) as b:
        result = b.load_state(path)
        assert result["n_restored"] > 0 and result["n_read"] == path.stat().st_size
        restored, restored_cached = next_turn(b, messages)
    assert restored_cached == warm_cached > 0
    assert_same_greedy_decoding(warm, restored, tol)


def test_a_prefix_the_streams_share_in_the_pool_is_saved_once(model_path, tmp_path):
    with make_aligner(model_path) as a:
        first_turn(a)
        result = a.save_state(tmp_path / "s.slot")
        cells = a.engine.n_cells_used
    assert result["shared"] > 0  # B's history is P's cells: in P's state only
    assert sum(result["streams"]) - result["shared"] == cells
    with make_aligner(model_path) as b:
        b.load_state(tmp_path / "s.slot")
        assert b.engine.n_cells_used == cells  # and shared again once restored
        assert [b.engine.cached_tokens(0, s) for s in range(2)] == result["streams"]


def test_restoring_replaces_what_the_slot_cached(pool_aligner, saved):
    path, messages = saved
    pool_aligner.create_chat_completion([{"role": "user", "content": "Name a fruit."}], max_tokens=4, **GREEDY)
    pool_aligner.load_state(path)
    _, cached = next_turn(pool_aligner, messages)
    assert cached > 20


def test_erase_forgets_the_slots_cache(pool_aligner, saved):
    pool_aligner.load_state(saved[0])
    assert pool_aligner.engine.erase_slot(0) > 0
    assert pool_aligner.engine.cached_tokens(0, 0) == 0 and pool_aligner.engine.n_cells_used == 0


# -- files that are refused -----------------------------------------------------

def corrupt(path: Path, out: Path, edit) -> Path:
    data = bytearray(path.read_bytes())
    out.write_bytes(bytes(edit(data)))
    return out


def flip(offset: int):
    def edit(data: bytearray) -> bytearray:
        data[offset] ^= 0x01
        return data
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:40], "truncated"),
    (lambda d: d[:10], "truncated"),
    (lambda d: d + b"\0", "corrupt"),
    (flip(len(MAGIC)), "format version"),
    (flip(0), "not a linalign slot file"),
    (flip(-1), "SHA-256"),
    (flip(1000), "SHA-256"),
    (lambda d: b"GGUF" + bytes(100), "not a linalign slot file"),
    (lambda d: b"", "truncated"),
], ids=["last-byte", "in-header", "in-prefix", "extra-byte", "version", "magic", "checksum", "payload", "other-file",
        "empty"])
def test_a_bad_file_is_refused_with_a_clear_error(pool_aligner, saved, tmp_path, edit, message):
    path = corrupt(saved[0], tmp_path / "bad.slot", edit)
    with pytest.raises(SlotFileError, match=message):
        pool_aligner.load_state(path)


def test_a_file_of_another_model_is_refused(model_path, tiny_gguf, saved):
    assert model_fingerprint(tiny_gguf) != model_fingerprint(model_path)
    with linalign.Aligner(tiny_gguf, n_ctx=256, n_threads=2) as tiny:
        with pytest.raises(SlotFileError, match="another model"):
            tiny.load_state(saved[0])


def test_the_fingerprint_hashes_the_header_and_refuses_a_cut_one(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    header_end = data.index(b"token_embd.weight") + 200  # past the tensor infos, short of the weights
    changed_weights = tmp_path / "weights.gguf"
    changed_weights.write_bytes(data[:-64] + bytes(64))  # the same header, other weights
    assert model_fingerprint(changed_weights) == model_fingerprint(tiny_gguf)
    for n in (0, 3, 24, len(data) // 50, header_end // 2):
        cut = tmp_path / f"cut{n}.gguf"
        cut.write_bytes(data[:n])
        with pytest.raises(SlotFileError):
            model_fingerprint(cut)


@pytest.mark.parametrize("kw, field", [(dict(kv_unified=False), "kv_unified"), (dict(flash_attn=True), "flash_attn")])
def test_a_file_of_another_kv_layout_is_refused(model_path, saved, kw, field):
    with make_aligner(model_path, **kw) as other:
        with pytest.raises(SlotFileError, match=field):
            other.load_state(saved[0])


def test_a_file_that_holds_more_than_the_pool_is_refused(model_path, tmp_path):
    # the principle in the system message: the streams share little, and
    # hold the long history twice
    history = [{"role": "user", "content": "Tell me about rivers. " * 120}]
    with make_aligner(model_path, kv_cells=2048) as big:
        big.create_chat_completion(history, principle=PRINCIPLE, principle_position="system", max_tokens=2)
        result = big.save_state(tmp_path / "big.slot")
    assert sum(result["streams"]) - result["shared"] > 1024
    with make_aligner(model_path) as small:
        with pytest.raises(SlotFileError, match="more than this pool"):
            small.load_state(tmp_path / "big.slot")
        assert small.engine.n_cells_used == 0


def test_a_slot_out_of_range_is_a_value_error(pool_aligner, saved, tmp_path):
    with pytest.raises(ValueError, match="slot must be in"):
        pool_aligner.save_state(tmp_path / "x.slot", slot=1)
    with pytest.raises(ValueError, match="slot must be in"):
        pool_aligner.load_state(saved[0], slot=-1)
    assert not (tmp_path / "x.slot").exists()


def test_a_running_slot_is_busy(pool_aligner, saved, tmp_path):
    gen = pool_aligner.submit(pool_aligner.chat_request(FIRST, max_tokens=50, **GREEDY))
    pool_aligner.engine.step()
    try:
        for action in (lambda: pool_aligner.save_state(tmp_path / "x.slot"), lambda: pool_aligner.load_state(saved[0]),
                       lambda: pool_aligner.engine.erase_slot(0)):
            with pytest.raises(SlotBusyError, match="running a request"):
                action()
        assert not gen.done
    finally:
        gen.cancel()
        pool_aligner.engine.step()


# -- fuzz: truncated and bit-flipped files ----------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_are_refused_and_leave_the_slot_as_it_was(pool_aligner, saved, tmp_path, data):
    good = saved[0].read_bytes()
    if data.draw(st.booleans(), label="truncate"):
        bad = good[:data.draw(st.integers(0, len(good) - 1), label="length")]
    else:
        buf = bytearray(good)
        for offset in data.draw(st.lists(st.integers(0, len(good) - 1), min_size=1, max_size=4), label="offsets"):
            buf[offset] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        bad = bytes(buf)
    if bad == good:
        return
    engine = pool_aligner.engine
    before = [engine.cached_tokens(0, s) for s in range(engine.n_streams)], engine.n_cells_used
    path = tmp_path / "fuzz.slot"
    path.write_bytes(bad)
    with pytest.raises(SlotFileError):
        pool_aligner.load_state(path)
    assert ([engine.cached_tokens(0, s) for s in range(engine.n_streams)], engine.n_cells_used) == before


# -- the server ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def slot_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slot-save-path")


@pytest.fixture(scope="module")
def server(slot_dir):
    srv = Server("--parallel", "2", "--slot-save-path", str(slot_dir))
    yield srv
    srv.stop()


def chat(srv: Server, messages: list[dict], **kw):
    return srv.client().chat.completions.create(model="m", messages=messages, temperature=0.0, seed=0,
                                                extra_body={"principle": PRINCIPLE, "id_slot": 0}, **kw)


def test_server_save_restore_and_erase_have_llama_servers_shapes(server, slot_dir):
    answer = chat(server, FIRST, max_tokens=8)
    slot = 0
    saved = server.post(f"/slots/{slot}?action=save", {"filename": "a.slot"}).json()
    assert saved["id_slot"] == slot and saved["filename"] == "a.slot" and saved["n_saved"] > 0
    assert saved["n_written"] == (slot_dir / "a.slot").stat().st_size and saved["timings"]["save_ms"] >= 0
    erased = server.post(f"/slots/{slot}?action=erase").json()
    assert erased == {"id_slot": slot, "n_erased": saved["n_saved"]}
    restored = server.post(f"/slots/{slot}?action=restore", {"filename": "a.slot"}).json()
    assert {k: restored[k] for k in ("id_slot", "filename", "n_restored", "n_read")} == {
        "id_slot": slot, "filename": "a.slot", "n_restored": saved["n_saved"], "n_read": saved["n_written"]}
    assert restored["timings"]["restore_ms"] >= 0
    messages = FIRST + [{"role": "assistant", "content": answer.choices[0].message.content},
                        {"role": "user", "content": "Tell me more."}]
    assert chat(server, messages, max_tokens=4).usage.prompt_tokens_details.cached_tokens > 0


def test_a_restart_restores_the_conversation_with_the_same_logprobs(slot_dir):
    messages = FIRST + [{"role": "assistant", "content": "Because of the air."},
                        {"role": "user", "content": "Tell me more."}]
    first = Server("--slot-save-path", str(slot_dir))
    try:
        chat(first, messages, max_tokens=2)
        assert first.post("/slots/0?action=save", {"filename": "restart.slot"}).status_code == 200
        warm = chat(first, messages + [{"role": "assistant", "content": "OK."}, {"role": "user", "content": "Why?"}],
                    max_tokens=10, logprobs=True, top_logprobs=TOP_ENTRIES)
    finally:
        first.stop()
    second = Server("--slot-save-path", str(slot_dir))
    try:
        assert second.health()["kv_cells_used"] == 0  # nothing restored by itself
        assert second.post("/slots/0?action=restore", {"filename": "restart.slot"}).status_code == 200
        restored = chat(second, messages + [{"role": "assistant", "content": "OK."}, {"role": "user", "content": "Why?"}],
                        max_tokens=10, logprobs=True, top_logprobs=TOP_ENTRIES)
    finally:
        second.stop()
    assert restored.usage.prompt_tokens_details.cached_tokens == warm.usage.prompt_tokens_details.cached_tokens > 0
    assert_same_greedy_decoding(entries_of_chat_response(warm), entries_of_chat_response(restored), POOL_LOGPROB_TOL)


# an absolute name outside the slot folder, which no other program makes
OUTSIDE = Path(tempfile.gettempdir()) / f"linalign-slot-escape-{os.getpid()}"


@pytest.mark.parametrize("path, body, param", [
    ("/slots/2?action=save", {"filename": "x"}, "id_slot"),
    ("/slots/-1?action=save", {"filename": "x"}, "id_slot"),
    ("/slots/abc?action=save", {"filename": "x"}, "id_slot"),
    ("/slots/0?action=fly", {"filename": "x"}, "action"),
    ("/slots/0", {"filename": "x"}, "action"),
    ("/slots/0?action=save", {"filename": "../x"}, "filename"),
    ("/slots/0?action=save", {"filename": "a/../../x"}, "filename"),
    ("/slots/0?action=save", {"filename": str(OUTSIDE)}, "filename"),
    ("/slots/0?action=save", {"filename": "x\u0000y"}, "filename"),
    ("/slots/0?action=save", {"filename": ".."}, "filename"),
    ("/slots/0?action=save", {"filename": "C:x"}, "filename"),
    ("/slots/0?action=save", {"filename": "a\\b"}, "filename"),
    ("/slots/0?action=save", {"filename": ""}, "filename"),
    ("/slots/0?action=save", {"filename": 7}, "filename"),
    ("/slots/0?action=save", {"filename": "x" * 256}, "filename"),
    ("/slots/0?action=save", {}, "filename"),
    ("/slots/0?action=restore", {"filename": "../x"}, "filename"),
    ("/slots/0?action=restore", {"filename": "never-saved.slot"}, "filename"),
])
def test_server_bad_input_is_a_400_with_param_and_writes_nothing(server, slot_dir, path, body, param):
    before = set(slot_dir.parent.rglob("*"))
    response = server.post(path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert set(slot_dir.parent.rglob("*")) == before
    assert not OUTSIDE.exists()


def test_server_refuses_a_corrupt_file_with_a_400(server, slot_dir):
    chat(server, FIRST, max_tokens=2)
    assert server.post("/slots/0?action=save", {"filename": "c.slot"}).status_code == 200
    data = bytearray((slot_dir / "c.slot").read_bytes())
    data[len(data) // 2] ^= 0x10
    (slot_dir / "c.slot").write_bytes(bytes(data))
    response = server.post("/slots/0?action=restore", {"filename": "c.slot"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_slot_file"
    assert "SHA-256" in response.json()["error"]["message"]
    server.assert_alive()


def test_server_a_running_slot_is_a_409(server):
    with httpx.Client(timeout=120) as client:
        with client.stream("POST", f"{server.url}/v1/chat/completions",
                           json={"messages": FIRST, "max_tokens": 200, "stream": True, "id_slot": 1}) as stream:
            lines = stream.iter_lines()
            next(line for line in lines if line.startswith("data:") and '"content"' in line)
            response = server.post("/slots/1?action=save", {"filename": "busy.slot"})
    assert response.status_code == 409 and response.json()["error"]["code"] == "slot_busy"


def test_without_slot_save_path_the_actions_are_a_501():
    srv = Server()
    try:
        response = srv.post("/slots/0?action=save", {"filename": "x.slot"})
        assert response.status_code == 501
        assert response.json()["error"]["message"] == (
            "This server does not support slots action. Start it with `--slot-save-path`")
        assert srv.post("/slots/0?action=erase").status_code == 501
    finally:
        srv.stop()


def test_the_file_format_prefix_is_as_documented(saved):
    magic, version, reserved, header_len, payload_len = struct.unpack_from("<8sIIQQ", saved[0].read_bytes())
    assert (magic, version, reserved) == (b"LNALSLOT", 1, 0)
    assert saved[0].stat().st_size == 32 + header_len + payload_len + 32
