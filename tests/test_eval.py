"""linalign eval: the persona, pairs and compare protocols on the real
default model, with a few items each. The commands run as the user runs
them (``python -m linalign eval ...``) in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from linalign import Aligner, linear_alignment_apply
from linalign.evaluation import load_pairs, load_persona_items, load_prompts, wilson_interval
from linalign.evaluation.chat_streams import chat_messages, stream_tokens
from linalign.evaluation.cli import main
from linalign.evaluation.persona import (ANSWER_PREFIX, DEFAULT_SYSTEM, letter_token_ids, persona_question,
                                         principle_for, DEFAULT_PRINCIPLE_TEMPLATE)
from linalign.evaluation.scoring import combine, nucleus_mask

ROOT = Path(__file__).resolve().parents[1]
PERSONA_DATA = ROOT / "data" / "persona_sample.jsonl"
PAIRS_DATA = ROOT / "data" / "pairs_sample.jsonl"


# one short item keeps each persona run to four small prefills
TINY_ITEM = {
    "question": "What should I eat for breakfast?",
    "answers": {"a": "Toast fingers and banana.", "b": "Porridge before your long run.",
                "c": "Eggs, no sugar.", "d": "Oats with soy milk."},
    "personas": {"a": "a toddler", "b": "a marathon runner", "c": "a person with diabetes", "d": "a vegan"},
}


@pytest.fixture(scope="module")
def persona_run(tmp_path_factory):
    """One persona run (four questions, ratios 0, 2 and auto, with generation)
    shared by the tests that read its outputs."""
    folder = tmp_path_factory.mktemp("persona")
    data = folder / "tiny.jsonl"
    data.write_text(json.dumps(TINY_ITEM) + "\n")
    out, plot = folder / "persona.json", folder / "persona.png"
    proc = run_eval("persona", "--data", str(data), "--ratios", "0,2,auto", "--generate", "--json", str(out),
                    "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text()), plot


def run_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linalign", "eval", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def aligner():
    with Aligner(n_ctx=1024) as a:
        yield a


def test_persona_json_has_every_method_with_intervals(persona_run):
    proc, result, _ = persona_run
    assert result["n"] == 4 and result["n_items"] == 1
    assert list(result["accuracy"]) == ["none", "prompt", "la@0.0", "la@2.0", "la@auto", "gen:none", "gen:la@0.0",
                                        "gen:la@2.0", "gen:la@auto"]
    for method, (lo, hi) in result["interval"].items():
        assert 0.0 <= lo <= result["accuracy"][method] <= hi <= 1.0
    assert [rec["target"] for rec in result["records"]] == ["A", "B", "C", "D"]
    assert "la@2.0" in proc.stdout and "95% interval" in proc.stdout
    assert "persona [" in proc.stderr  # the progress bar


def test_persona_la0_equals_prompt_exactly(persona_run):
    _, result, _ = persona_run
    assert result["accuracy"]["la@0.0"] == result["accuracy"]["prompt"]
    assert all(rec["choice"]["la@0.0"] == rec["choice"]["prompt"] for rec in result["records"])


def test_persona_plot_is_a_png(persona_run):
    assert persona_run[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_la0_combine_is_the_prompt_logits_exactly(aligner):
    item = TINY_ITEM
    principle = principle_for(DEFAULT_PRINCIPLE_TEMPLATE, item["personas"]["b"])
    prompt_p, prompt_b = stream_tokens(aligner, chat_messages(persona_question(item), DEFAULT_SYSTEM), principle,
                                       ANSWER_PREFIX)
    logits_p, logits_b = aligner.eval_logits(prompt_p, prompt_b, 1, 1)
    assert not np.array_equal(logits_p, logits_b)  # the principle changes the logits
    assert np.array_equal(combine(logits_p, logits_b, 0.0), logits_p.astype(np.float64))


def test_nucleus_and_combine_match_the_native_sampler(aligner):
    tokens = aligner.tokenize("The capital of France is")
    base = aligner.tokenize("Paris is in")
    logits_p, logits_b = aligner.eval_logits(tokens, base, 1, 1)
    l_p, l_0 = logits_p[0], logits_b[0]
    ids, values = linear_alignment_apply(l_p, l_0, 2.0, 0.8)
    mask = nucleus_mask(l_p, 0.8)[0]
    assert set(np.flatnonzero(mask)) == set(ids.tolist())
    np.testing.assert_allclose(combine(l_p, l_0, 2.0)[ids], values, rtol=1e-5, atol=1e-4)


def test_letters_are_single_tokens_after_the_answer_prefix(aligner):
    ids = letter_token_ids(aligner)
    assert [aligner.detokenize([t]).strip() for t in ids] == ["A", "B", "C", "D"]


def test_pairs_reports_accuracy_margin_and_la0_equals_prompt(tmp_path):
    out = tmp_path / "pairs.json"
    proc = run_eval("pairs", "--data", str(PAIRS_DATA), "--limit", "2", "--ratios", "0,1,auto", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["n"] == 2 and len(result["records"]) == 2
    for key in ("accuracy", "interval", "mean_margin", "out_of_nucleus"):
        assert list(result[key]) == ["none", "prompt", "la@0.0", "la@1.0", "la@auto"]
    for key in ("accuracy", "mean_margin", "out_of_nucleus"):
        assert result[key]["la@0.0"] == result[key]["prompt"]
    assert all(np.isfinite(ll[side]) for rec in result["records"] for ll in rec["log_likelihood"].values()
               for side in ("chosen", "rejected"))
    assert "mean margin" in proc.stdout


def test_compare_writes_table_and_escaped_html(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\n\nWhat is <b>1 & 1</b>?\n")
    page, out = tmp_path / "compare.html", tmp_path / "compare.json"
    proc = run_eval("compare", "--prompts", str(prompts), "--principle", "Answer like a pirate.", "--ratios", "2",
                    "--max-tokens", "8", "--html", str(page), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["columns"] == ["plain", "prompt-only", "la@2.0"]
    assert [row["prompt"] for row in result["rows"]] == ["What is <b>1 & 1</b>?"]
    assert all(isinstance(text, str) for text in result["rows"][0]["outputs"].values())
    html_text = page.read_text()
    assert "What is &lt;b&gt;1 &amp; 1&lt;/b&gt;?" in html_text and "<b>1 & 1</b>" not in html_text
    assert "prompt-only" in proc.stdout


def test_compare_shows_each_placement_in_one_table(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a fruit.\n")
    out = tmp_path / "compare.json"
    proc = run_eval("compare", "--prompts", str(prompts), "--principle", "Answer like a pirate.", "--ratios", "2,auto",
                    "--max-tokens", "6", "--placements", "system,end", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["columns"] == ["plain", "prompt-only, system", "la@2.0, system", "la@auto, system",
                                 "prompt-only, end", "la@2.0, end", "la@auto, end"]
    assert result["methods"]["la@2.0, system"]["principle_position"] == "system"
    assert result["methods"]["la@2.0, end"]["principle_position"] == "end"
    assert set(result["fluency"]) == set(result["columns"])
    assert main(["compare", "--prompts", str(prompts), "--principle", "x", "--placements", "middle"]) == 2


@pytest.mark.parametrize("content, message", [
    ('{"question": "q"\n', ":1: not valid JSON"),
    ('[1, 2]\n', ":1: each line must be a JSON object"),
    ('{"question": "q", "answers": {"a": "x"}, "personas": {}}\n', "exactly the keys a, b, c, d"),
    ('\n', "no items"),
])
def test_bad_persona_data_fails_with_the_line_and_field(tmp_path, capsys, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    assert main(["persona", "--data", str(data)]) == 2
    assert message in capsys.readouterr().err


def test_missing_data_file_and_output_folder_fail_before_loading_the_model(tmp_path, capsys):
    assert main(["pairs", "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err
    assert main(["persona", "--data", str(PERSONA_DATA), "--json", str(tmp_path / "no" / "out.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("ratios", ["1,x", "nan", ""])
def test_bad_ratios_are_rejected(ratios):
    with pytest.raises(SystemExit):
        main(["persona", "--data", str(PERSONA_DATA), "--ratios", ratios])


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_sample_data_files_are_valid():
    items = load_persona_items(PERSONA_DATA)
    assert len(items) >= 20
    assert len({item["question"] for item in items}) == len(items)
    assert len(load_pairs(PAIRS_DATA)) >= 5
    assert len(load_prompts(ROOT / "data" / "compare_prompts.txt")) >= 3
