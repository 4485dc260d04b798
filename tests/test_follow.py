"""Issue 14: ``linalign eval follow`` wires IFEval's verifiable instructions
(if-verifiable) to the methods and placements, on the real default model."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from linalign.evaluation.follow import INSTRUCTIONS, evaluate_follow, follow_methods, load_instructions


def test_every_instruction_has_a_text_and_a_checker_that_decides() -> None:
    examples = {"lowercase": ("this is a calm and quiet answer written in plain english for you", "This Is Not Quiet At All, My Friend"), "no_comma": ("no commas here", "one, two"),
                "postscript": ("Hi.\nP.S. bye", "Hi."), "keyword": ("the sunshine", "the rain"),
                "quotation": ('"quoted"', "bare"), "end_phrase": ("Done. Any other questions?", "Done."),
                "title": ("<<A title>>\ntext", "text"),
                "french": ("Bonjour, je suis très content de vous voir aujourd'hui.", "Hello, I am very glad.")}
    for name, text, check in load_instructions(list(INSTRUCTIONS)):
        good, bad = examples[name]
        assert len(text) > 10 and check(good) and not check(bad), name


def test_methods_cover_each_placement() -> None:
    assert list(follow_methods([2.0], ["system", "end"])) == ["plain", "prompt/system", "la@2.0/system",
                                                              "prompt/end", "la@2.0/end"]
    with pytest.raises(ValueError, match="unknown instruction"):
        load_instructions(["lowercase", "shouting"])


def test_evaluate_follow_checks_real_answers(aligner) -> None:
    result = evaluate_follow(aligner, ["Say hello."], ["lowercase", "keyword"], ratios=[2.0], max_tokens=8)
    assert result["n"] == 2 and set(result["methods"]) == {"plain", "prompt/system", "la@2.0/system",
                                                           "prompt/end", "la@2.0/end"}
    for m in result["methods"]:
        lo, hi = result["interval"][m]
        assert 0 <= lo <= result["adherence"][m] <= hi <= 1
    checks = dict((n, c) for n, _, c in load_instructions(["lowercase", "keyword"]))
    for sample in result["samples"]:
        assert sample["followed"] == checks[sample["instruction"]](sample["answer"])
    assert len(result["samples"]) == 2 * len(result["methods"])


def test_cli_bad_instruction_is_a_clear_error(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "linalign", "eval", "follow", "--instructions", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown instruction" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "linalign", "eval", "follow", "--positions", "middle"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--positions" in r.stderr


def test_an_answer_that_repeats_the_instruction_is_an_echo() -> None:
    from linalign.evaluation.follow import echoes

    principle = "At the end of your response, please explicitly add a postscript starting with P.S."
    assert echoes('"At the end of your response, please explicitly add a postscript', principle)
    assert not echoes("Here is my answer.\nP.S. See you soon.", principle)
