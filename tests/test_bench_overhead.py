"""``linalign bench overhead`` runs end to end on tiny synthetic models it
writes itself, and prints every row and ratio (no timing is asserted: this
machine's figures are the lead's to measure on a quiet one)."""
from __future__ import annotations

import json

import pytest

from linalign.bench import main as bench_main
from linalign.benchmarking.overhead import RATIOS, ROWS

VOCABS = (1000, 2000)
MAX_TOKENS = 8


def test_bench_overhead_prints_every_row_and_ratio_for_each_vocabulary(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    assert bench_main(["overhead", "--vocab", ",".join(map(str, VOCABS)), "--max-tokens", str(MAX_TOKENS),
                       "--reps", "1", "--threads", "2", "--json", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    for n_vocab in VOCABS:
        assert f"vocabulary {n_vocab:,}" in table
    for label in ROWS.values():
        assert table.count(label) == len(VOCABS)
    for name, *_ in RATIOS:
        assert table.count(name) == len(VOCABS)
    assert table.count("target <= 1.10") == 3 * len(VOCABS)

    doc = json.loads(out.read_text())
    for n_vocab in VOCABS:
        rows = doc["vocabs"][str(n_vocab)]["rows"]
        assert set(rows) == set(ROWS)
        # the end-of-sequence token is never chosen: every path makes every token asked for
        for key, row in rows.items():
            per_run = MAX_TOKENS * (4 if key in ("raw-8", "aligned-x4") else 1)
            assert min(row["tokens"]) >= per_run, key
            assert row["us_per_token"]["median"] > 0
        assert rows["aligned-x4"]["steps"][0] <= MAX_TOKENS + 2  # the 4 requests step together
        # each ratio also per repetition: the two rows of one repetition divided
        for name, num, den, per, _ in RATIOS:
            ratio = doc["vocabs"][str(n_vocab)]["ratios"][name]
            unit = f"us_per_{per}"
            want = rows[num]["reps"][unit][0] / rows[den]["reps"][unit][0]
            assert ratio["per_rep"]["median"] == pytest.approx(want)
            assert ratio["value"] == pytest.approx(rows[num][unit]["median"] / rows[den][unit]["median"])
        # the host work: each timed row's step less its llama_decode, which takes most but not all of it
        for key, row in rows.items():
            if key == "llama-cpp-python":
                assert "host_us_per_step" not in row  # its loop's decode is not timed apart
                continue
            assert 0 < row["host_us_per_step"]["median"] < row["us_per_step"]["median"], key
        host = doc["vocabs"][str(n_vocab)]["host_beyond_floor"]
        assert set(host) == {name.replace(" / ", " - ") for name, *_, target in RATIOS if target is not None}
        for name, num, den, _, _ in [r for r in RATIOS if r[4] is not None]:
            want = rows[num]["reps"]["host_us_per_step"][0] - rows[den]["reps"]["host_us_per_step"][0]
            assert host[name.replace(" / ", " - ")]["median"] == pytest.approx(want)
            steps, hosts = rows[num]["reps"]["us_per_step"], rows[num]["reps"]["host_us_per_step"]
            floor_steps, floor_hosts = rows[den]["reps"]["us_per_step"], rows[den]["reps"]["host_us_per_step"]
            want = (steps[0] - hosts[0]) / (floor_steps[0] - floor_hosts[0])
            assert host[name.replace(" / ", " - ")]["decode_ratio"]["median"] == pytest.approx(want)
    assert table.count("host work per step beyond the floor's") == len(VOCABS)


def test_bench_overhead_refuses_a_bad_vocabulary_list(capsys):
    with pytest.raises(SystemExit):
        bench_main(["overhead", "--vocab", "big"])
    assert "vocabularies are comma-separated" in capsys.readouterr().err
