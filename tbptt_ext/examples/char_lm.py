"""Character-level language model trained with truncated BPTT.

Embedding -> tbptt_ext.LSTM -> Linear over bytes, trained with tbptt_ext.TBPTT on one
long text split into B parallel contiguous streams (as PyTorch's word_language_model
example batchifies), the state carried across chunks and restarted where a new source
file begins. The default corpus is the Python standard library's own source, so
nothing is downloaded.

    tbptt-char-lm                 # ~2 minutes on 2 CPU cores (= python -m tbptt_ext.examples.char_lm)
    tbptt-char-lm --compare       # also torch.nn.LSTM, side by side
    tbptt-char-lm --text FILE     # your own text
    torchrun --nproc_per_node=2 --no-python tbptt-char-lm    # data parallel over 2 processes
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import os
import queue as queue_module
import resource
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_distributed
import torch.nn.functional as F
from torch import nn

import tbptt_ext

BITS_PER_NAT = 1 / math.log(2)


@dataclass
class Corpus:
    data: bytes
    starts: list[int]  # byte offsets where a source file begins


def stdlib_corpus(max_bytes: int) -> Corpus:
    """The standard library's .py files, concatenated in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, starts, size = [], [], 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        starts.append(size)
        parts.append(data)
        size += len(data)
        if size >= max_bytes:
            break
    return Corpus(b"".join(parts)[:max_bytes], [s for s in starts if s < max_bytes])


def stdlib_text(max_bytes: int) -> bytes:
    return stdlib_corpus(max_bytes).data


def load_corpus(text_file: str | None, max_bytes: int) -> Corpus:
    if text_file is None:
        return stdlib_corpus(max_bytes)
    data = Path(text_file).read_bytes()[:max_bytes]
    if len(data) < 1000:
        raise SystemExit(f"--text {text_file}: need at least 1000 bytes of text, got {len(data)}")
    return Corpus(data, [0])


TRAIN_FRACTION = 0.95  # of the text, trained on; the rest is held out


def train_bytes(n_bytes: int) -> int:
    """How many of a text's first n_bytes the model trains on (the rest is held out)."""
    return int(n_bytes * TRAIN_FRACTION)


def check_corpus_size(args, n_bytes: int,
                      remedy: str = "(--max-chars, --text), or a smaller --batch or --bptt",
                      settings: str | None = None) -> None:
    """SystemExit unless the text gives every stream at least one training chunk (k + 1
    steps) and a held-out part of at least two steps; `remedy` names the options to change,
    `settings` how the message names the batch and chunk length (default: as options)."""
    train_steps = train_bytes(n_bytes) // args.batch
    valid_steps = (n_bytes - train_bytes(n_bytes)) // min(args.batch, 8)
    if train_steps < args.bptt + 1 or valid_steps < 2:
        need = max((args.bptt + 1) * args.batch / TRAIN_FRACTION, 2 * min(args.batch, 8) / (1 - TRAIN_FRACTION))
        raise SystemExit(
            f"{n_bytes:,} bytes of text are too few for "
            f"{settings or f'--batch {args.batch} x --bptt {args.bptt}'}: each stream "
            f"needs at least one chunk of {args.bptt + 1} steps and a held-out part; use about {math.ceil(need):,} "
            f"bytes or more {remedy}"
        )


def launched_as_other_rank() -> bool:
    """Whether torchrun started this process as a rank other than 0 (which stays quiet about
    errors every rank finds alike)."""
    return os.environ.get("RANK", "0") != "0"


def node_label() -> str:
    """'' on one machine; ' (node N)' for a process of a torchrun launch over several nodes."""
    nodes_differ = os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) != os.environ.get(
        "WORLD_SIZE", "1")
    return f" (node {os.environ.get('GROUP_RANK', '?')})" if nodes_differ else ""


class ArgumentParser(argparse.ArgumentParser):
    """Under torchrun every process parses the same arguments: only rank 0 prints a usage
    error or the help (the others exit with the same code, silently). Errors about files,
    which may differ from machine to machine, are printed by each machine's first process
    (node_error)."""

    def error(self, message):
        if launched_as_other_rank():
            raise SystemExit(2)
        super().error(message)

    def node_error(self, message):
        if os.environ.get("LOCAL_RANK", "0") != "0":
            raise SystemExit(2)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error{node_label()}: {message}\n")

    def print_help(self, file=None):
        if not launched_as_other_rank():
            super().print_help(file)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default in --help (where it has one)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or isinstance(action, argparse._StoreFalseAction):
            return action.help
        return super()._get_help_string(action)


def check_positive(p: argparse.ArgumentParser, args, *names: str, zero_ok: bool = False) -> None:
    """p.error (usage and a message, exit code 2) for an option below 1 (below 0 with zero_ok)."""
    for name in names:
        value = getattr(args, name.replace("-", "_"))
        if value < 0 or (value == 0 and not zero_ok):
            p.error(f"--{name} must be {'at least 0' if zero_ok else 'positive'}, got {value}")


def check_device(p: argparse.ArgumentParser, device: str) -> None:
    try:
        parsed = torch.device(device)
    except RuntimeError:
        p.error(f"--device {device!r} is not a device torch knows (for example cpu, cuda, cuda:1)")
    if parsed.type not in ("cpu", "cuda"):
        p.error(f"--device {device}: runs on cpu or cuda (for example cpu, cuda, cuda:1)")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        p.error(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")


def check_output_file(p: argparse.ArgumentParser, option: str, path: str | None) -> None:
    """Before any work: a file we will write at the end must be writable where it is."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        p.error(f"{option} {path}: is a directory, not a file")
    folder = target.parent
    if not folder.is_dir():
        p.error(f"{option} {path}: no such folder {str(folder)!r}")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        p.error(f"{option} {path}: not writable")


def check_text_file(p: argparse.ArgumentParser, option: str, path: str | None) -> None:
    """Every process reads the text: each machine checks its own copy (node_error)."""
    if path is None or Path(path).is_file():
        return
    error = p.node_error if isinstance(p, ArgumentParser) else p.error
    target = Path(path)
    error(f"{option} {path}: " + ("is a directory, not a file" if target.is_dir() else
                                  "not a regular file" if target.exists() else "no such file"))


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

    def forward(self, x, state=None, reset=None):
        if reset is None:
            output, state = self.rnn(self.embed(x), state)
        else:
            output, state = self.rnn(self.embed(x), state, reset=reset)
        return self.head(output), state


def cross_entropy(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def evaluate_bpc(model, data: torch.Tensor, k: int, resets: torch.Tensor | None = None) -> float:
    """Bits per character on `data` ([T, B] streams), state carried across chunks."""
    model.eval()
    state, total, count = None, 0.0, 0
    for start in range(0, data.shape[0] - 1, k):
        y = data[start + 1 : start + k + 1]
        x = data[start : start + y.shape[0]]
        reset = None if resets is None else resets[start : start + y.shape[0]]
        logits, state = model(x, state, reset)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / max(count, 1) * BITS_PER_NAT


@torch.no_grad()
def sample(model, prompt: bytes, length: int, temperature: float, device, seed: int = 0) -> str:
    model.eval()
    x = torch.tensor(list(prompt), dtype=torch.long, device=device).unsqueeze(1)
    logits, state = model(x, None)
    out = bytearray(prompt)
    next_logits = logits[-1, 0]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(length):
        probs = torch.softmax(next_logits.float().cpu() / temperature, -1)
        if not torch.isfinite(probs).all():
            raise SystemExit("the trained model's predictions are not finite numbers, so there is no sample: "
                             "training diverged; try a smaller --lr")
        byte = int(torch.multinomial(probs, 1, generator=generator))
        out.append(byte)
        logits, state = model(torch.tensor([[byte]], device=device), state)
        next_logits = logits[-1, 0]
    model.train()
    return printable(out.decode("utf-8", errors="replace"))


def printable(text: str) -> str:
    """Control characters (an undertrained model emits ESC, BEL, NUL...) escaped, so that
    the sample cannot drive the terminal; newlines and tabs kept."""
    return "".join(c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- distributed
@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    def leave(self) -> None:
        """Every process together, after the last collective: a barrier, then the group
        ends (a rank leaving while another still talks to the group was seen to abort in
        gloo's teardown, "terminate called without an active exception", once in CI). What
        rank 0 does afterwards alone (saving, sampling) is then not bound by
        --dist-timeout. Not on the way out of an error: a failing process exits at once and
        torchrun ends the others, instead of the others waiting out the timeout."""
        if self.active and torch_distributed.is_initialized():
            torch_distributed.barrier()
            torch_distributed.destroy_process_group()


def setup_distributed(args) -> Distributed:
    """Joins the process group when started by torchrun (WORLD_SIZE > 1): gloo on the CPU,
    NCCL on GPUs. A bad launch is a clear error, not a hang."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    # (the same on every process: printed by rank 0 only, the others exit with the same code)
    quiet = launched_as_other_rank()
    if args.compare:
        raise SystemExit(1 if quiet else "--compare runs single-process; start it without torchrun")
    if args.batch % world != 0:
        raise SystemExit(1 if quiet else f"--batch {args.batch} must be divisible by the number of processes "
                         f"({world}): each process trains its own share of the {args.batch} streams")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise SystemExit(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the processes with "
                         "torchrun, e.g. torchrun --nproc_per_node=2 --no-python tbptt-char-lm")
    backend = "nccl" if args.device.startswith("cuda") else "gloo"
    timeout = datetime.timedelta(seconds=args.dist_timeout)
    try:
        torch_distributed.init_process_group(backend, timeout=timeout)
        torch_distributed.barrier()  # every process arrived, within the timeout
    except Exception as exc:  # noqa: BLE001 - any rendezvous failure gets the same advice
        raise SystemExit(
            f"distributed rendezvous failed ({type(exc).__name__}: {exc}); expected {world} processes at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {args.dist_timeout:.0f} s. "
            "Start all of them with torchrun (--nproc_per_node / --nnodes) or raise --dist-timeout."
        ) from exc
    if args.device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"process {local_rank} of this machine{node_label()} has no GPU of its own: the machine "
                             f"has {torch.cuda.device_count()} CUDA GPU(s); start at most that many processes per "
                             "machine (--nproc_per_node), or train on the CPU (--device cpu)")
        args.device = f"cuda:{local_rank}"
        torch.cuda.set_device(args.device)
    return Distributed(torch_distributed.get_rank(), world)


# ------------------------------------------------------------------ training
def train(args, rnn_name: str, quiet: bool = False, dist: Distributed | None = None) -> dict:
    """Trains one model; returns speed, memory and losses (on every rank; rank 0 prints)."""
    dist = dist or Distributed()
    quiet = quiet or dist.rank != 0
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    corpus = load_corpus(args.text, args.max_chars)
    check_corpus_size(args, len(corpus.data))
    data = torch.frombuffer(bytearray(corpus.data), dtype=torch.uint8).long()
    starts = torch.zeros(len(data), dtype=torch.bool)
    if args.file_resets:
        starts[torch.tensor(corpus.starts[1:], dtype=torch.long)] = True
    split = train_bytes(len(data))
    # the sample's prompt: Python for the standard library, else the held-out text's start
    prompt = b"def " if args.text is None else bytes(corpus.data[split : split + 4])
    train_data, train_starts = batchify(data[:split], args.batch), batchify(starts[:split], args.batch)
    valid_data, valid_starts = batchify(data[split:], min(args.batch, 8)), batchify(starts[split:], min(args.batch, 8))
    share = args.batch // dist.world  # this process's streams
    columns = slice(dist.rank * share, (dist.rank + 1) * share)
    train_data, train_starts = train_data[:, columns].to(device), train_starts[:, columns].to(device)
    valid_data, valid_starts = valid_data.to(device), valid_starts.to(device)
    rnn_cls = tbptt_ext.LSTM if rnn_name == "tbptt_ext.LSTM" else nn.LSTM
    model = CharLM(rnn_cls, embed=args.embed, hidden=args.hidden, layers=args.layers).to(device)
    trained = model
    if dist.active:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    bar = None
    if not quiet:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=(train_data.shape[0] - 1 + args.bptt - 1) // args.bptt, unit="chunk", dynamic_ncols=True,
                       desc=rnn_name + (f" (bpc of rank 0's {share} streams)" if dist.active else ""))
        except ImportError:
            print("(pip install tqdm for a progress bar)")

    def report(update: tbptt_ext.TBPTTUpdate):
        if not math.isfinite(update.loss):
            raise SystemExit(f"training diverged: the loss is {update.loss} at update {update.update} "
                             f"(--lr {args.lr}, --clip {args.clip}); try a smaller --lr")
        bpc = update.loss * BITS_PER_NAT
        if bar is not None:
            bar.update(1)
            bar.set_postfix(bpc=f"{bpc:.3f}", chars_per_s=f"{update.steps_per_second * args.batch:,.0f}")
        elif not quiet and update.update % 100 == 0:
            print(f"update {update.update}: {bpc:.3f} bits/char, "
                  f"{update.steps_per_second * args.batch:,.0f} chars/s", flush=True)

    trainer = tbptt_ext.TBPTT(trained, optimizer, cross_entropy, k1=args.bptt, max_grad_norm=args.clip,
                              callback=report)
    rss_before = peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    resets = train_starts[:-1] if args.file_resets else None
    result = trainer.run(train_data[:-1], train_data[1:], resets=resets)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    if bar is not None:
        bar.close()
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else peak_rss_mib())
    tail = result.losses[-max(1, len(result.losses) // 20):]
    tail_loss = sum(tail) / len(tail)
    if dist.active:  # each process saw its own streams: the mean over all of them
        total = torch.tensor([tail_loss], dtype=torch.float64, device=device)  # (NCCL: device tensors only)
        torch_distributed.all_reduce(total)
        tail_loss = total.item() / dist.world
    # Every rank evaluates (the same held-out data: the ranks stay in step); then the
    # processes leave the group together, and rank 0 alone saves and samples.
    valid_bpc = evaluate_bpc(model, valid_data, args.bptt, valid_starts if args.file_resets else None)
    dist.leave()
    # with --compare the tbptt_ext model is the one saved
    if args.save and dist.rank == 0 and rnn_name == "tbptt_ext.LSTM":
        saved_args = dict(vars(args), text=str(Path(args.text).resolve()) if args.text else None)
        torch.save({"model": model.state_dict(), "args": saved_args}, args.save)
    return {
        "model": rnn_name,
        "processes": dist.world,
        "seconds": seconds,
        "chars_per_second": (train_data.shape[0] - 1) * args.batch / seconds,  # every step of every stream
        "peak_mib": peak,
        "peak_kind": "GPU max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "rss_growth_mib": peak_rss_mib() - rss_before,
        "final_train_bpc": tail_loss * BITS_PER_NAT,
        "valid_bpc": valid_bpc,
        "updates": len(result.losses),
        "sample": (sample(model, prompt, args.sample_chars, 0.8, device, args.seed)
                   if args.sample_chars and dist.rank == 0 else ""),
        "parameters": [p.detach().cpu() for p in model.parameters()],
    }


def _train_in_child(args, rnn_name, queue):
    result = train(args, rnn_name, quiet=True)
    result.pop("parameters")  # tensors would outlive this process's shared memory
    queue.put(result)


def train_isolated(args, rnn_name):
    """Runs train() in a fresh process so that peak memory is its own; SystemExit if that
    process ends without a result (its error is printed above by the process itself)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_train_in_child, args=(args, rnn_name, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                try:  # the result may have arrived just as the process ended
                    result = queue.get(timeout=1.0)
                    break
                except queue_module.Empty:
                    raise SystemExit(f"training {rnn_name} in its own process failed (exit code {proc.exitcode}); "
                                     "its error is printed above") from None
    proc.join()
    return result


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--text", help="train on this file instead of the standard library's source")
    p.add_argument("--max-chars", type=int, default=5_000_000, help="bytes of text to use")
    p.add_argument("--batch", type=int, default=32, help="parallel streams (over all processes)")
    p.add_argument("--bptt", type=int, default=64, help="chunk length k1 (truncation)")
    p.add_argument("--embed", type=int, default=64, help="embedding width")
    p.add_argument("--hidden", type=int, default=256, help="LSTM hidden size")
    p.add_argument("--layers", type=int, default=1, help="LSTM layers")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm")
    p.add_argument("--sample-chars", type=int, default=300, help="length of the sample printed at the end (0: none)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where to train")
    p.add_argument("--no-file-resets", dest="file_resets", action="store_false",
                   help="carry the state across source-file boundaries instead of restarting it there")
    p.add_argument("--save", help="save the trained model here (for tbptt-probe --load; with --compare the "
                   "tbptt_ext.LSTM model)")
    p.add_argument("--compare", action="store_true",
                   help="also train torch.nn.LSTM and compare (both without file resets: torch.nn has none)")
    p.add_argument("--dist-timeout", type=float, default=60.0,
                   help="seconds to wait for all processes of a torchrun launch")
    args = p.parse_args(argv)
    check_positive(p, args, "max-chars", "batch", "bptt", "embed", "hidden", "layers")
    check_positive(p, args, "sample-chars", zero_ok=True)
    for name in ("lr", "clip", "dist-timeout"):
        value = getattr(args, name.replace("-", "_"))
        if not (value > 0 and math.isfinite(value)):
            p.error(f"--{name} must be a positive finite number, got {value}")
    if not 0 <= args.seed < 2**63:
        p.error(f"--seed must be in [0, 2**63), got {args.seed}")
    check_device(p, args.device)
    check_text_file(p, "--text", args.text)
    if not launched_as_other_rank():  # rank 0 alone writes it
        check_output_file(p, "--save", args.save)
    if args.compare:
        args.file_resets = False
    return args


def comparison_table(results: list[dict]) -> str:
    rows = [("chars/s", "chars_per_second", "{:,.0f}"), ("time (s)", "seconds", "{:.1f}"),
            (f"peak MiB ({results[0]['peak_kind']})", "peak_mib", "{:.0f}"),
            ("final train bpc", "final_train_bpc", "{:.3f}"), ("held-out bpc", "valid_bpc", "{:.3f}")]
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'':{width}}" + "".join(f"{r['model']:>18}" for r in results)]
    lines += [f"{label:{width}}" + "".join(f"{fmt.format(r[key]):>18}" for r in results) for label, key, fmt in rows]
    ratio = results[0]["chars_per_second"] / results[1]["chars_per_second"]
    lines.append(f"speed ratio (tbptt_ext / torch.nn): {ratio:.2f}x")
    return "\n".join(lines)


def run(argv=None):
    """The main job; returns the result dict (a list of two with --compare)."""
    args = parse_args(argv)
    dist = setup_distributed(args)
    try:
        return _run(args, dist)
    except SystemExit as exc:
        # a message every process finds alike (e.g. too little text): printed by rank 0 only
        if dist.active and dist.rank != 0 and isinstance(exc.code, str):
            raise SystemExit(1) from None
        raise


def _run(args, dist: Distributed):
    if dist.rank == 0:
        where = f"{dist.world} processes" if dist.active else f"{torch.get_num_threads()} threads"
        print(f"tbptt_ext {tbptt_ext.__version__} on {args.device} "
              f"(compiled backends: {sorted(tbptt_ext.compiled_backends()) or 'none'}), torch {torch.__version__}, "
              f"{where}")
        print(f"corpus: {args.text or 'Python standard library source'}, {args.max_chars:,} bytes max; "
              f"batch {args.batch} x bptt {args.bptt}, LSTM {args.layers}x{args.hidden}; state "
              + ("carried throughout (one file)" if args.text else
                 "restarted at each file boundary" if args.file_resets else "carried across file boundaries"))
    if not args.compare:
        r = train(args, "tbptt_ext.LSTM", dist=dist)
        if dist.rank == 0:
            print(f"\ntrained {r['updates']} updates in {r['seconds']:.1f} s, {r['chars_per_second']:,.0f} chars/s"
                  + (f" over {dist.world} processes" if dist.active else ""))
            print(f"train bpc (last 5%): {r['final_train_bpc']:.3f}   held-out bpc: {r['valid_bpc']:.3f}")
            if r["sample"]:
                print("\nsample:\n" + r["sample"])
        return r
    check_corpus_size(args, len(load_corpus(args.text, args.max_chars).data))  # here, before the processes
    results = []
    for name in ("tbptt_ext.LSTM", "torch.nn.LSTM"):
        print(f"training {name} in its own process ...", flush=True)
        results.append(train_isolated(args, name))
    print("\n" + comparison_table(results))
    if results[0]["sample"]:
        print("\nsample (tbptt_ext.LSTM):\n" + results[0]["sample"])
    return results


def main(argv=None) -> None:
    """The tbptt-char-lm command (prints; returns nothing)."""
    run(argv)


if __name__ == "__main__":
    main()
