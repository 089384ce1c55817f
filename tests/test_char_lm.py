"""The main job (character-level LM trained with TBPTT) runs end to end on a tiny corpus."""

import pytest
import torch

from tbptt_ext.examples import char_lm

def assert_usage_error(run, argv, message, capsys):
    """run(argv) exits as argparse's p.error does: code 2, the message on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


TINY = ["--max-chars", "30000", "--batch", "4", "--bptt", "16", "--embed", "8", "--hidden", "16",
        "--sample-chars", "40", "--device", "cpu"]


def test_char_lm_trains_on_a_text_file(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    result = char_lm.run(["--text", str(text), *TINY])
    out = capsys.readouterr().out
    assert "held-out bpc" in out and "sample:" in out
    assert result["updates"] == (int(len(text.read_bytes()) * 0.95) // 4 - 1 + 15) // 16
    assert 0 < result["valid_bpc"] < 8  # a byte model starts at 8 bits; it learned something
    # the sample starts from the held-out text's first bytes (the standard library's: "def ")
    data = text.read_bytes()
    prompt = data[int(len(data) * 0.95) :][:4].decode()
    assert result["sample"].startswith(prompt) and len(result["sample"]) > 30


def test_char_lm_default_corpus_is_the_standard_library():
    data = char_lm.stdlib_text(50_000)
    assert len(data) == 50_000 and b"def " in data


def test_char_lm_compare_prints_both(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("abcdefgh " * 2000)
    results = char_lm.run(["--text", str(text), "--compare", *TINY, "--sample-chars", "0"])
    out = capsys.readouterr().out
    assert [r["model"] for r in results] == ["tbptt_ext.LSTM", "torch.nn.LSTM"]
    assert "speed ratio" in out and "peak MiB" in out
    # same seed, same data, same math: the two runs end at nearly the same loss
    assert results[0]["final_train_bpc"] == pytest.approx(results[1]["final_train_bpc"], rel=1e-3)


def test_char_lm_rejects_a_tiny_file(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text("too short")
    with pytest.raises(SystemExit, match="at least 1000 bytes"):
        char_lm.run(["--text", str(text), *TINY])


def test_char_lm_restarts_the_state_at_file_boundaries(monkeypatch):
    """With file resets on (the default), the state restarts where each source file begins."""
    corpus = char_lm.stdlib_corpus(60_000)
    assert len(corpus.starts) > 2 and corpus.starts[0] == 0
    for s in corpus.starts[1:]:
        assert corpus.data[s - 1 : s + 1] != b""  # a boundary inside the text
    calls = []
    original = char_lm.CharLM.forward

    def spy(self, x, state=None, reset=None):
        calls.append(None if reset is None else reset.clone())
        return original(self, x, state, reset)

    monkeypatch.setattr(char_lm.CharLM, "forward", spy)
    args = ["--max-chars", "60000", "--batch", "4", "--bptt", "16", "--embed", "8", "--hidden", "16",
            "--sample-chars", "0", "--device", "cpu"]
    char_lm.run(args)
    resets = torch.cat([r for r in calls if r is not None])
    # every file start but the first lands in one stream at one step (those in the held-out
    # 5% are checked by the evaluation, which passes the mask too)
    assert 0 < int(resets.sum()) <= len(corpus.starts) - 1
    calls.clear()
    char_lm.run([*args, "--no-file-resets"])
    assert all(r is None for r in calls)


def test_main_prints_and_returns_nothing(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("abcdefgh " * 2000)
    assert char_lm.main(["--text", str(text), *TINY, "--sample-chars", "0"]) is None


def test_probe_command_trains_then_probes_and_loads_a_saved_model(tmp_path, capsys):
    from tbptt_ext.examples import probe

    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    model_file = tmp_path / "model.pt"
    char_lm.run(["--text", str(text), *TINY, "--save", str(model_file)])
    capsys.readouterr()
    probe.main(["--load", str(model_file), "--ks", "2,4,8", "--window", "16", "--batch", "2",
                "--plot", str(tmp_path / "bias.png")])
    out = capsys.readouterr().out
    assert "rel. error" in out and "smallest k with cosine" in out or "no k up to 8" in out
    assert (tmp_path / "bias.png").stat().st_size > 0
    assert_usage_error(probe.main, ["--load", str(model_file), "--ks", "4,32", "--window", "16"],
                       "must be at least the largest k (32)", capsys)


@pytest.mark.parametrize("argv,message", [
    (["--batch", "0"], "--batch must be positive, got 0"),
    (["--bptt", "-1"], "--bptt must be positive, got -1"),
    (["--max-chars", "-100"], "--max-chars must be positive, got -100"),
    (["--sample-chars", "-3"], "--sample-chars must be at least 0, got -3"),
    (["--lr", "0"], "--lr must be a positive finite number, got 0.0"),
    (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
    (["--clip", "-1"], "--clip must be a positive finite number, got -1.0"),
    (["--dist-timeout", "inf"], "--dist-timeout must be a positive finite number, got inf"),
    (["--seed", str(2**64)], f"--seed must be in [0, 2**63), got {2**64}"),
    (["--text", "/dev/null"], "--text /dev/null: not a regular file"),
    (["--device", "foo"], "--device 'foo' is not a device torch knows"),
    (["--text", "/nonexistent/corpus.txt"], "--text /nonexistent/corpus.txt: no such file"),
    (["--device", "meta"], "--device meta: runs on cpu or cuda"),
    (["--save", "/nonexistent/folder/model.pt"], "--save /nonexistent/folder/model.pt: no such folder"),
    (["--save", "/"], "--save /: is a directory, not a file"),
])
def test_char_lm_bad_arguments_are_usage_errors(argv, message, capsys):
    assert_usage_error(char_lm.parse_args, argv, message, capsys)


def test_char_lm_too_little_text_for_the_batch_and_chunk():
    with pytest.raises(SystemExit, match="too few for --batch 32 x --bptt 64.*use about 2,190 bytes"):
        char_lm.run(["--max-chars", "2000", "--device", "cpu"])
    # the smallest amount it names is enough
    char_lm.check_corpus_size(char_lm.parse_args(["--device", "cpu"]), 2190)


def test_char_lm_compare_ends_when_a_training_process_fails():
    # a child that dies (here: arguments it cannot use) must end the comparison with an
    # error, not leave the parent waiting for a result forever
    import argparse

    with pytest.raises(SystemExit, match="training tbptt_ext.LSTM in its own process failed \\(exit code 1\\)"):
        char_lm.train_isolated(argparse.Namespace(), "tbptt_ext.LSTM")


@pytest.mark.parametrize("argv,message", [
    (["--ks", "8,abc"], "--ks must be comma-separated positive integers"),
    (["--ks", "0,8"], "--ks must be comma-separated positive integers, got '0,8'"),
    (["--plot", "/nonexistent/folder/bias.png"], "--plot /nonexistent/folder/bias.png: no such folder"),
    (["--text", __file__], "--text goes with --load"),
    (["--threshold", "2"], "--threshold is a cosine similarity: it must be in (0, 1], got 2.0"),
    (["--window", "4"], "--window 4 must be at least the largest k (256)"),
    (["--batch", "0"], "--batch must be positive, got 0"),
    (["--load", "/nonexistent/model.pt"], "--load /nonexistent/model.pt: no such file"),
])
def test_probe_bad_arguments_are_usage_errors(argv, message, capsys):
    from tbptt_ext.examples import probe

    assert_usage_error(probe.parse_args, argv, message, capsys)


def test_probe_too_little_training_text_names_its_own_option():
    from tbptt_ext.examples import probe

    # the message names the training it needs, not the char-lm's --batch/--bptt (options the probe lacks)
    with pytest.raises(SystemExit, match="100 bytes of text are too few for training the main job's model first "
                       "\\(32 streams x chunks of 64 steps\\).*\\(--train-chars\\)"):
        probe.main(["--train-chars", "100", "--device", "cpu"])


def test_probe_load_of_a_file_that_is_not_a_saved_model(tmp_path):
    from tbptt_ext.examples import probe

    path = tmp_path / "notes.pt"
    path.write_text("not a model")
    with pytest.raises(SystemExit, match="not a model saved by tbptt-char-lm --save"):
        probe.main(["--load", str(path)])


def test_probe_load_when_the_training_text_has_moved(tmp_path, capsys):
    from tbptt_ext.examples import probe

    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    model_file = tmp_path / "model.pt"
    char_lm.run(["--text", str(text), *TINY, "--sample-chars", "0", "--save", str(model_file)])
    moved = text.rename(tmp_path / "moved.txt")
    probe_args = ["--load", str(model_file), "--ks", "2,4", "--window", "8", "--batch", "2"]
    with pytest.raises(SystemExit, match="was trained on .*corpus.txt, which is no longer there; pass --text FILE"):
        probe.main(probe_args)
    capsys.readouterr()
    probe.main([*probe_args, "--text", str(moved)])
    assert "truncation bias of the gradient over a 8-step window, 2 streams" in capsys.readouterr().out
    # a window longer than the text the model did not train on (900 bytes here)
    with pytest.raises(SystemExit, match="needs 8,016 bytes of text the model did not train on; .* has 900"):
        probe.main(["--load", str(model_file), "--text", str(moved), "--ks", "8", "--window", "500", "--batch", "16"])


def test_usage_error_printed_by_rank_zero_only(monkeypatch, capsys):
    # under torchrun each process parses the arguments; one message, not one per process
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_info:
        char_lm.parse_args(["--batch", "0"])
    assert exit_info.value.code == 2 and capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert_usage_error(char_lm.parse_args, ["--batch", "0"], "--batch must be positive, got 0", capsys)


def test_sample_is_printable_and_follows_the_seed():
    import tbptt_ext

    torch.manual_seed(0)
    model = char_lm.CharLM(tbptt_ext.LSTM, embed=8, hidden=16)  # untrained: any byte may come out
    samples = [char_lm.sample(model, b"def ", 400, 1.5, "cpu", seed) for seed in (0, 0, 1)]
    assert samples[0] == samples[1] and samples[0] != samples[2]
    for text in samples:
        assert all(c.isprintable() or c in "\n\t" for c in text)
    assert char_lm.printable("a\x1b[2Jb\n\tc\x07\x00") == "a\\x1b[2Jb\n\tc\\x07\\x00"


def test_diverged_training_is_a_clear_error():
    with pytest.raises(SystemExit, match="training diverged.*try a smaller --lr"):
        char_lm.run([*TINY, "--lr", "1e30"])


def test_compare_saves_the_tbptt_ext_model_only(tmp_path):
    # with --compare both training processes ran train() and both saved, torch.nn's last
    args = char_lm.parse_args([*TINY, "--sample-chars", "0", "--save", str(tmp_path / "m.pt"), "--compare"])
    char_lm.train(args, "torch.nn.LSTM", quiet=True)
    assert not (tmp_path / "m.pt").exists()
    char_lm.train(args, "tbptt_ext.LSTM", quiet=True)
    assert (tmp_path / "m.pt").exists()


def test_file_errors_are_printed_by_each_machine(monkeypatch, capsys):
    # a text file missing on one machine of a multi-node launch: that machine's first
    # process says so (it exited silently, and rank 0 blamed the rendezvous)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("GROUP_RANK", "1")
    assert_usage_error(char_lm.parse_args, ["--text", "/nonexistent/corpus.txt"],
                       "error (node 1): --text /nonexistent/corpus.txt: no such file", capsys)
    monkeypatch.setenv("LOCAL_RANK", "1")  # the machine's other processes stay quiet
    with pytest.raises(SystemExit) as exit_info:
        char_lm.parse_args(["--text", "/nonexistent/corpus.txt"])
    assert exit_info.value.code == 2 and capsys.readouterr().err == ""
    # --save is written by rank 0 alone: the other ranks do not check its folder
    char_lm.parse_args(["--save", "/nonexistent/folder/model.pt", "--device", "cpu"])
