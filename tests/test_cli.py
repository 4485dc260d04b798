"""The linalign command on the default model."""
from __future__ import annotations

import subprocess
import sys


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "linalign", *args], input=stdin, capture_output=True, text=True,
                          timeout=300)


def test_demo_compare_prints_three_answers():
    result = run("Why is the sky blue?", "--principle", "The user is a five-year-old child.", "--compare",
                 "-n", "12", "--seed", "1", "--n-ctx", "512")
    assert result.returncode == 0, result.stderr
    for title in ("plain (no principle)", "principle in the prompt only", "aligned (ratio auto)"):
        assert title in result.stdout


def test_chat_reads_commands():
    result = run("chat", "-p", "Answer like a pirate.", "-n", "8", "--n-ctx", "512",
                 stdin="hello\n/ratio 1.5\n/principle Be brief.\n/add Be kind.:3\n/negative Be rude.\nbye\n"
                       "/negative Be kind.\n/add \n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "principle: Answer like a pirate. (ratio 1.5)" in out and "principle: Be brief. (ratio 1.5)" in out
    assert "principle: Be kind. (ratio 3)" in out and "negative principle: Be rude." in out
    assert "error: negative_principle equals" in out  # refused; the chat goes on


def test_missing_model_is_a_clear_error():
    result = run("hi", "--model", "/nonexistent.gguf")
    assert result.returncode == 2
    assert "not found" in result.stderr
