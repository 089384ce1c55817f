"""How long must the truncation be? The truncation-bias probe on the main job's model.

Trains the character-level LM of tbptt-char-lm briefly (or loads one saved with
`tbptt-char-lm --save FILE`), takes a window of held-out text and compares, for each
truncation length k, the gradient of the window's loss with the state detached every
k steps against the full gradient through the whole window
(tbptt_ext.diagnostics.truncation_bias). Prints the table and the smallest k whose
gradient points the same way as the full one (cosine >= --threshold).

    tbptt-probe                          # ~30 s on 2 CPU cores
    tbptt-probe --load model.pt --plot bias.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import tbptt_ext
from tbptt_ext.diagnostics import truncation_bias
from tbptt_ext.examples import char_lm


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=char_lm.HelpFormatter)
    p.add_argument("--load", help="a model saved by tbptt-char-lm --save (default: train one briefly)")
    p.add_argument("--text", help="the text the --load model was trained on, if it has moved since "
                                  "(default: the path it was saved with)")
    p.add_argument("--train-chars", type=int, default=600_000, help="bytes of text to train on first")
    p.add_argument("--ks", default="8,16,32,64,128,256", help="truncation lengths to probe (comma-separated)")
    p.add_argument("--window", type=int, default=512, help="steps of the window (at least the largest k)")
    p.add_argument("--batch", type=int, default=16, help="streams in the window")
    p.add_argument("--threshold", type=float, default=0.95,
                   help="cosine similarity (at most 1) that counts as unbiased enough")
    p.add_argument("--plot", help="write a PNG of cosine and relative error against k")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where to run")
    args = p.parse_args(argv)
    try:
        ks = sorted({int(k) for k in args.ks.split(",")})
    except ValueError:
        ks = [0]
    if ks[0] < 1:
        p.error(f"--ks must be comma-separated positive integers, got {args.ks!r}")
    args.ks = ks
    char_lm.check_positive(p, args, "train-chars", "window", "batch")
    if not 0 < args.threshold <= 1:
        p.error(f"--threshold is a cosine similarity: it must be in (0, 1], got {args.threshold}")
    if args.window < args.ks[-1]:
        p.error(f"--window {args.window} must be at least the largest k ({args.ks[-1]})")
    char_lm.check_device(p, args.device)
    char_lm.check_text_file(p, "--load", args.load)
    char_lm.check_text_file(p, "--text", args.text)
    if args.text and not args.load:
        p.error("--text goes with --load (the text a saved model was trained on); without --load the probe "
                "trains on the standard library's source")
    char_lm.check_output_file(p, "--plot", args.plot)
    return args


def load_model(path: str):
    """The model and its tbptt-char-lm arguments from a file of tbptt-char-lm --save."""
    try:
        saved = torch.load(path, map_location="cpu")
        lm_args = char_lm.parse_args([])
        vars(lm_args).update(saved["args"])
        model = char_lm.CharLM(tbptt_ext.LSTM, embed=lm_args.embed, hidden=lm_args.hidden, layers=lm_args.layers)
        model.load_state_dict(saved["model"])
    except Exception as exc:  # not a file of tbptt-char-lm --save: say so, not torch's unpickling advice
        raise SystemExit(f"--load {path}: not a model saved by tbptt-char-lm --save (reading it as one failed: "
                         f"{type(exc).__name__})") from None
    return model, lm_args


def main(argv=None) -> None:
    args = parse_args(argv)
    ks = args.ks
    if args.load:
        model, lm_args = load_model(args.load)
        if args.text:
            lm_args.text = args.text
        elif lm_args.text and not Path(lm_args.text).is_file():
            raise SystemExit(f"--load {args.load}: the model was trained on {lm_args.text}, which is no longer "
                             "there; pass --text FILE to point to that text")
        print(f"loaded {args.load}")
    else:
        lm_args = char_lm.parse_args(["--max-chars", str(args.train_chars), "--sample-chars", "0",
                                      "--device", args.device])
        char_lm.check_corpus_size(
            lm_args, args.train_chars, "(--train-chars)",
            settings=f"training the main job's model first ({lm_args.batch} streams x chunks of {lm_args.bptt} steps)")
        print(f"training the main job's model on {args.train_chars:,} bytes first (--load FILE skips this) ...")
        result = char_lm.train(lm_args, "tbptt_ext.LSTM", quiet=True)
        model = char_lm.CharLM(tbptt_ext.LSTM, embed=lm_args.embed, hidden=lm_args.hidden, layers=lm_args.layers)
        with torch.no_grad():
            for p, trained in zip(model.parameters(), result["parameters"]):
                p.copy_(trained)
        print(f"  {result['updates']} updates, held-out {result['valid_bpc']:.3f} bits/char")
    device = torch.device(args.device)
    model.to(device)
    # A window of held-out text: the tail of the text after the part the model trained on
    # (char_lm.train_bytes of its first --max-chars bytes).
    need = (args.window + 1) * args.batch
    corpus = char_lm.load_corpus(lm_args.text, lm_args.max_chars + need)
    unseen = len(corpus.data) - char_lm.train_bytes(min(len(corpus.data), lm_args.max_chars))
    if unseen < need:
        raise SystemExit(f"a {args.window}-step window of {args.batch} streams needs {need:,} bytes of text the "
                         f"model did not train on; {lm_args.text or 'the corpus'} has {unseen:,} after the "
                         "training part: use a smaller --window or --batch")
    data = torch.frombuffer(bytearray(corpus.data[-need:]), dtype=torch.uint8).long()
    streams = char_lm.batchify(data, args.batch).to(device)
    x, y = streams[:-1], streams[1:]
    bias = truncation_bias(model, x, y, char_lm.cross_entropy, ks)
    print(f"\ntruncation bias of the gradient over a {args.window}-step window, {args.batch} streams:")
    print(bias.table())
    k = bias.suggest(args.threshold)
    if k is None:
        print(f"no k up to {ks[-1]} reaches cosine {args.threshold}: the gradient depends on more than "
              f"{ks[-1]} steps of history; probe larger k (--ks, --window)")
    else:
        print(f"smallest k with cosine >= {args.threshold}: {k}")
    if args.plot:
        bias.plot(args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
