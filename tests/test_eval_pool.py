"""linalign eval pool: several eval follow runs read as one evaluation."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from linalign.evaluation.pool import pool_follow


def _sample(method, task, instruction, followed, echo=False, answer="a b c d e"):
    return {"method": method, "task": task, "instruction": instruction, "followed": followed, "echo": echo,
            "mean_ratio": 0.0, "answer": answer}


def _write(path, samples):
    path.write_text(json.dumps({"protocol": "follow", "samples": samples}))
    return str(path)


def test_pooled_counts_per_file_and_together(tmp_path) -> None:
    one = _write(tmp_path / "one.json", [_sample("plain", "t1", "lowercase", False),
                                         _sample("la@2.0/end", "t1", "lowercase", True),
                                         _sample("la@2.0/end", "t1", "keyword", True, echo=True)])
    two = _write(tmp_path / "two.json", [_sample("plain", "t1", "lowercase", False),  # the same answer again
                                         _sample("la@2.0/end", "t2", "lowercase", False,
                                                 answer="go on go on go on go on"),
                                         _sample("la@auto/end", "t2", "lowercase", True)])
    result = pool_follow([one, two])
    m = result["methods"]
    assert m["plain"]["n"] == 1 and result["conflicts"] == 0
    assert m["la@2.0/end"]["files"] == {one: {"strict": 1, "n": 2}, two: {"strict": 0, "n": 1}}
    assert (m["la@2.0/end"]["strict"], m["la@2.0/end"]["n"]) == (1, 3)  # the echo is not followed
    assert m["la@2.0/end"]["rep4"] == pytest.approx((0 + 0 + 3 / 5) / 3)
    lo, hi = m["la@2.0/end"]["interval"]
    assert lo < 1 / 3 < hi
    assert pool_follow([one, two], ["keyword"])["methods"]["la@2.0/end"]["n"] == 1
    with pytest.raises(ValueError, match="no answers of instruction"):
        pool_follow([one, two], ["french"])


def test_an_answer_that_differs_between_files_is_counted_once_and_reported(tmp_path) -> None:
    one = _write(tmp_path / "one.json", [_sample("plain", "t1", "lowercase", False, answer="x")])
    two = _write(tmp_path / "two.json", [_sample("plain", "t1", "lowercase", True, answer="y")])
    result = pool_follow([one, two])
    assert result["conflicts"] == 1 and result["methods"]["plain"]["strict"] == 0  # the first file's


def test_the_command_prints_the_table_and_rejects_other_files(tmp_path) -> None:
    one = _write(tmp_path / "one.json", [_sample("la@auto/end", "t1", "lowercase", True)])
    out = tmp_path / "pooled.json"
    run = subprocess.run([sys.executable, "-m", "linalign", "eval", "pool", one, "--json", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "la@auto/end" in run.stdout and "1/1" in run.stdout
    assert json.loads(out.read_text())["methods"]["la@auto/end"]["strict"] == 1
    other = tmp_path / "persona.json"
    other.write_text(json.dumps({"protocol": "persona"}))
    bad = subprocess.run([sys.executable, "-m", "linalign", "eval", "pool", str(other)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not the JSON of linalign eval follow" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "linalign", "eval", "pool", str(tmp_path / "none.json")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
