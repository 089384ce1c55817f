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

import torch

import tbptt_ext
from tbptt_ext.diagnostics import truncation_bias
from tbptt_ext.examples import char_lm


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", help="a model saved by tbptt-char-lm --save (default: train one briefly)")
    p.add_argument("--train-chars", type=int, default=600_000, help="bytes of text to train on first")
    p.add_argument("--ks", default="8,16,32,64,128,256", help="truncation lengths to probe")
    p.add_argument("--window", type=int, default=512, help="steps of the window (at least the largest k)")
    p.add_argument("--batch", type=int, default=16, help="streams in the window")
    p.add_argument("--threshold", type=float, default=0.95, help="cosine similarity that counts as unbiased enough")
    p.add_argument("--plot", help="write a PNG of cosine and relative error against k")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    ks = sorted(int(k) for k in args.ks.split(","))
    if args.window < ks[-1]:
        raise SystemExit(f"--window {args.window} must be at least the largest k ({ks[-1]})")
    if args.load:
        saved = torch.load(args.load, map_location="cpu")
        lm_args = char_lm.parse_args([])
        vars(lm_args).update(saved["args"])
        model = char_lm.CharLM(tbptt_ext.LSTM, embed=lm_args.embed, hidden=lm_args.hidden, layers=lm_args.layers)
        model.load_state_dict(saved["model"])
        print(f"loaded {args.load}")
    else:
        lm_args = char_lm.parse_args(["--max-chars", str(args.train_chars), "--sample-chars", "0",
                                      "--device", args.device])
        print(f"training the main job's model on {args.train_chars:,} bytes first (--load FILE skips this) ...")
        result = char_lm.train(lm_args, "tbptt_ext.LSTM", quiet=True)
        model = char_lm.CharLM(tbptt_ext.LSTM, embed=lm_args.embed, hidden=lm_args.hidden, layers=lm_args.layers)
        with torch.no_grad():
            for p, trained in zip(model.parameters(), result["parameters"]):
                p.copy_(trained)
        print(f"  {result['updates']} updates, held-out {result['valid_bpc']:.3f} bits/char")
    device = torch.device(args.device)
    model.to(device)
    # A window of held-out text (the tail of a corpus longer than the training part).
    corpus = char_lm.load_corpus(lm_args.text, lm_args.max_chars + (args.window + 1) * args.batch)
    data = torch.frombuffer(bytearray(corpus.data[-(args.window + 1) * args.batch:]), dtype=torch.uint8).long()
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
