"""The main job (character-level LM trained with TBPTT) runs end to end on a tiny corpus."""

import pytest

from tbptt_ext.examples import char_lm

TINY = ["--max-chars", "30000", "--batch", "4", "--bptt", "16", "--embed", "8", "--hidden", "16",
        "--sample-chars", "40", "--device", "cpu"]


def test_char_lm_trains_on_a_text_file(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    result = char_lm.main(["--text", str(text), *TINY])
    out = capsys.readouterr().out
    assert "held-out bpc" in out and "sample:" in out
    assert result["updates"] == (int(len(text.read_bytes()) * 0.95) // 4 - 1 + 15) // 16
    assert 0 < result["valid_bpc"] < 8  # a byte model starts at 8 bits; it learned something
    assert result["sample"].startswith("def ") and len(result["sample"]) > 30


def test_char_lm_default_corpus_is_the_standard_library():
    data = char_lm.stdlib_text(50_000)
    assert len(data) == 50_000 and b"def " in data


def test_char_lm_compare_prints_both(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("abcdefgh " * 2000)
    results = char_lm.main(["--text", str(text), "--compare", *TINY, "--sample-chars", "0"])
    out = capsys.readouterr().out
    assert [r["model"] for r in results] == ["tbptt_ext.LSTM", "torch.nn.LSTM"]
    assert "speed ratio" in out and "peak MiB" in out
    # same seed, same data, same math: the two runs end at nearly the same loss
    assert results[0]["final_train_bpc"] == pytest.approx(results[1]["final_train_bpc"], rel=1e-3)


def test_char_lm_rejects_a_tiny_file(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text("too short")
    with pytest.raises(SystemExit, match="at least 1000 bytes"):
        char_lm.main(["--text", str(text), *TINY])
