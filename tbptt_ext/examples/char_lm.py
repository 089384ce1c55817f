"""Character-level language model trained with truncated BPTT.

Embedding -> tbptt_ext.LSTM -> Linear over bytes, trained with tbptt_ext.TBPTT on one
long text split into B parallel contiguous streams (as PyTorch's word_language_model
example batchifies), the state carried across chunks. The default corpus is the
Python standard library's own source, so nothing is downloaded.

    tbptt-char-lm                 # ~2 minutes on 2 CPU cores (= python -m tbptt_ext.examples.char_lm)
    tbptt-char-lm --compare       # also torch.nn.LSTM, side by side
    tbptt-char-lm --text FILE     # your own text
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import resource
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import tbptt_ext

BITS_PER_NAT = 1 / math.log(2)


def stdlib_text(max_bytes: int) -> bytes:
    """The standard library's .py files, concatenated in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        parts.append(data)
        size += len(data)
        if size >= max_bytes:
            break
    return b"".join(parts)[:max_bytes]


def load_corpus(text_file: str | None, max_bytes: int) -> bytes:
    if text_file is None:
        return stdlib_text(max_bytes)
    data = Path(text_file).read_bytes()[:max_bytes]
    if len(data) < 1000:
        raise SystemExit(f"--text {text_file}: need at least 1000 bytes of text, got {len(data)}")
    return data


def batchify(data: torch.Tensor, batch: int) -> torch.Tensor:
    """[N] -> [N // batch, batch]: column b is the b-th contiguous slice of the stream."""
    steps = data.numel() // batch
    return data[: steps * batch].view(batch, steps).t().contiguous()


class CharLM(nn.Module):
    def __init__(self, rnn_cls, vocab: int = 256, embed: int = 64, hidden: int = 256, layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = rnn_cls(embed, hidden, num_layers=layers)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        output, state = self.rnn(self.embed(x), state)
        return self.head(output), state


def cross_entropy(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def evaluate_bpc(model, data: torch.Tensor, k: int) -> float:
    """Bits per character on `data` ([T, B] streams), state carried across chunks."""
    model.eval()
    state, total, count = None, 0.0, 0
    for start in range(0, data.shape[0] - 1, k):
        x = data[start : start + k]
        y = data[start + 1 : start + k + 1]
        x = x[: y.shape[0]]
        logits, state = model(x, state)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / max(count, 1) * BITS_PER_NAT


@torch.no_grad()
def sample(model, prompt: bytes, length: int, temperature: float, device) -> str:
    model.eval()
    x = torch.tensor(list(prompt), dtype=torch.long, device=device).unsqueeze(1)
    logits, state = model(x, None)
    out = bytearray(prompt)
    next_logits = logits[-1, 0]
    generator = torch.Generator(device="cpu").manual_seed(0)
    for _ in range(length):
        probs = torch.softmax(next_logits.float().cpu() / temperature, -1)
        byte = int(torch.multinomial(probs, 1, generator=generator))
        out.append(byte)
        logits, state = model(torch.tensor([[byte]], device=device), state)
        next_logits = logits[-1, 0]
    model.train()
    return out.decode("utf-8", errors="replace")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(args, rnn_name: str, quiet: bool = False) -> dict:
    """Trains one model; returns speed, memory and losses."""
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    corpus = load_corpus(args.text, args.max_chars)
    data = torch.frombuffer(bytearray(corpus), dtype=torch.uint8).long()
    split = int(len(data) * 0.95)
    train_data = batchify(data[:split], args.batch).to(device)
    valid_data = batchify(data[split:], min(args.batch, 8)).to(device)
    rnn_cls = tbptt_ext.LSTM if rnn_name == "tbptt_ext.LSTM" else nn.LSTM
    model = CharLM(rnn_cls, embed=args.embed, hidden=args.hidden, layers=args.layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    chars_per_chunk = args.bptt * args.batch
    bar = None
    if not quiet:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=(train_data.shape[0] - 1 + args.bptt - 1) // args.bptt, unit="chunk", dynamic_ncols=True,
                       desc=rnn_name)
        except ImportError:
            print("(pip install tqdm for a progress bar)")

    def report(update: tbptt_ext.TBPTTUpdate):
        bpc = update.loss * BITS_PER_NAT
        if bar is not None:
            bar.update(1)
            bar.set_postfix(bpc=f"{bpc:.3f}", chars_per_s=f"{update.steps_per_second * args.batch:,.0f}")
        elif not quiet and update.update % 100 == 0:
            print(f"update {update.update}: {bpc:.3f} bits/char, "
                  f"{update.steps_per_second * args.batch:,.0f} chars/s", flush=True)

    trainer = tbptt_ext.TBPTT(model, optimizer, cross_entropy, k1=args.bptt, max_grad_norm=args.clip, callback=report)
    rss_before = peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = trainer.run(train_data[:-1], train_data[1:])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    if bar is not None:
        bar.close()
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else peak_rss_mib())
    tail = result.losses[-max(1, len(result.losses) // 20):]
    return {
        "model": rnn_name,
        "seconds": seconds,
        "chars_per_second": len(result.losses) * chars_per_chunk / seconds,
        "peak_mib": peak,
        "peak_kind": "GPU max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "rss_growth_mib": peak_rss_mib() - rss_before,
        "final_train_bpc": sum(tail) / len(tail) * BITS_PER_NAT,
        "valid_bpc": evaluate_bpc(model, valid_data, args.bptt),
        "updates": len(result.losses),
        "sample": sample(model, b"def ", args.sample_chars, 0.8, device) if args.sample_chars else "",
    }


def _train_in_child(args, rnn_name, queue):
    queue.put(train(args, rnn_name, quiet=True))


def train_isolated(args, rnn_name):
    """Runs train() in a fresh process so that peak memory is its own."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_train_in_child, args=(args, rnn_name, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", help="train on this file instead of the standard library's source")
    p.add_argument("--max-chars", type=int, default=5_000_000, help="bytes of text to use (default 5M)")
    p.add_argument("--batch", type=int, default=32, help="parallel streams")
    p.add_argument("--bptt", type=int, default=64, help="chunk length k1 (truncation)")
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm")
    p.add_argument("--sample-chars", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compare", action="store_true", help="also train torch.nn.LSTM and compare")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    print(f"tbptt_ext {tbptt_ext.__version__} on {args.device} "
          f"(compiled backends: {sorted(tbptt_ext.compiled_backends()) or 'none'}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"corpus: {args.text or 'Python standard library source'}, {args.max_chars:,} bytes max; "
          f"batch {args.batch} x bptt {args.bptt}, LSTM {args.layers}x{args.hidden}")
    if not args.compare:
        r = train(args, "tbptt_ext.LSTM")
        print(f"\ntrained {r['updates']} updates in {r['seconds']:.1f} s, {r['chars_per_second']:,.0f} chars/s")
        print(f"train bpc (last 5%): {r['final_train_bpc']:.3f}   held-out bpc: {r['valid_bpc']:.3f}")
        if r["sample"]:
            print("\nsample:\n" + r["sample"])
        return r
    results = [train_isolated(args, name) for name in ("tbptt_ext.LSTM", "torch.nn.LSTM")]
    print(f"\n{'':24}{'tbptt_ext.LSTM':>18}{'torch.nn.LSTM':>18}")
    rows = [("chars/s", "chars_per_second", "{:,.0f}"), ("time (s)", "seconds", "{:.1f}"),
            (f"peak MiB ({results[0]['peak_kind']})", "peak_mib", "{:.0f}"),
            ("final train bpc", "final_train_bpc", "{:.3f}"), ("held-out bpc", "valid_bpc", "{:.3f}")]
    for label, key, fmt in rows:
        print(f"{label:24}" + "".join(f"{fmt.format(r[key]):>18}" for r in results))
    print(f"speed ratio (tbptt_ext / torch.nn): {results[0]['chars_per_second'] / results[1]['chars_per_second']:.2f}x")
    if results[0]["sample"]:
        print("\nsample (tbptt_ext.LSTM):\n" + results[0]["sample"])
    return results


if __name__ == "__main__":
    main()
