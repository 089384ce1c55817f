"""Diagnostics for truncated BPTT: the per-step gradient flow through a recurrent
module, and the bias truncation puts into the gradient.

:class:`GradientFlow` records ||dL/dh_t|| at every step of every backward through a
tbptt_ext RNN/LSTM/GRU, computed by the fused backward kernels from the gradient they
carry anyway. :func:`truncation_bias` compares the gradient of a window computed with
the state detached every k steps against the full gradient, for several k.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .modules import _ChunkedRNNBase
from .tbptt import _positive_int, detach_state


# ------------------------------------------------------------ gradient flow
class _Record:
    """Where the norms of one forward call's backward go: [rows = layers x directions, steps
    of the call]. `seq` orders the calls of a recorder."""

    def __init__(self, flow: GradientFlow, rows: int, steps: int, seq: int):
        self.flow, self.rows, self.steps, self.seq = flow, rows, steps, seq

    def slot(self, row: int, offset: int) -> Callable[[Tensor], None]:
        def receive(norms: Tensor) -> None:
            self.flow._receive(self, row, offset, norms.detach())

        return receive


def _batched(t: Tensor) -> bool:
    """Whether t is batched by torch.func.vmap at some level (a vmapped backward: jacrev)."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t):
            return True
        t = functorch.get_unwrapped(t)
    return False


def _assemble(parts: list[tuple[_Record, int, int, Tensor]]) -> Tensor:
    """One backward's record: the calls it reached side by side in forward order, each
    call's steps at its own offset; NaN where a layer's backward did not run."""
    calls = sorted({id(r): r for r, *_ in parts}.values(), key=lambda r: r.seq)
    start, steps = {}, 0
    for r in calls:
        start[id(r)], steps = steps, steps + r.steps
    out = torch.full((calls[0].rows, steps), float("nan"), dtype=torch.float64)
    for record, row, offset, norms in parts:
        first = start[id(record)] + offset
        out[row, first : first + norms.shape[0]] = norms.to("cpu", torch.float64)
    return out


class GradientFlow(contextlib.AbstractContextManager):
    """Records the gradient reaching a recurrent module's outputs, step by step.

    While the context is active, every backward through ``module`` (a tbptt_ext RNN,
    LSTM or GRU) records, for each layer and direction, ||dL/dh_t||_2 over batch and
    hidden units at every step t of the chunk: the total gradient reaching the layer's
    output at step t, its direct gradient plus what flows back from the step processed
    after it (for LSTM the gradient of h_t). ``records`` gets one float64 tensor of
    shape [layers x directions, T] per backward (row layer * directions + direction): T
    is the steps of the forward calls that backward reached, side by side in the order
    they ran (one chunk, or with TBPTT(k1, k2 > k1) the k2-step window of its chunks);
    NaN where a layer's backward did not run (its parameters frozen, say). Nothing is
    recorded, and nothing is paid, outside the context (a backward after it, of a graph
    built inside, is not recorded either), nor for a backward under torch.func.vmap
    (jacrev, ``is_grads_batched``). For PackedSequence input the reverse direction's steps count from
    each sequence's end. Eager mode only (not under torch.compile)::

        with tbptt_ext.diagnostics.GradientFlow(model.rnn) as flow:
            trainer.run(inputs, targets)
        flow.plot("gradient_flow.png")
    """

    def __init__(self, module: torch.nn.Module):
        if not isinstance(module, _ChunkedRNNBase):
            raise TypeError(
                f"GradientFlow needs a tbptt_ext RNN, LSTM or GRU module, got {type(module).__name__}"
            )
        self.module = module
        self._records: list[Tensor] = []
        self._pending: list = []  # the parts of each finished backward, not yet assembled
        # (record, row, offset, norms) of each backward running now, by autograd graph task:
        # backwards nest (reentrant checkpointing) and run in several threads at once
        self._open: dict[int, list] = {}
        self._calls = 0

    @property
    def records(self) -> list[Tensor]:
        """One float64 tensor [layers x directions, T] per backward, in order."""
        while self._pending:
            self._records.append(_assemble(self._pending.pop(0)))
        return self._records

    def _receive(self, record: _Record, row: int, offset: int, norms: Tensor) -> None:
        # (a backward pays a list append; the first of a backward also asks the engine to
        # close that backward's record when it ends)
        if self.module._flow_recorder is not self or _batched(norms):
            return  # a backward after the context, or under vmap (jacrev): not recorded
        task = torch._C._current_graph_task_id()
        parts = self._open.get(task)
        if parts is None:
            parts = self._open[task] = []
            torch.autograd.Variable._execution_engine.queue_callback(lambda: self._close_backward(task))
        parts.append((record, row, offset, norms))

    def _close_backward(self, task: int) -> None:
        parts = self._open.pop(task, None)
        if parts:
            self._pending.append(parts)

    def __enter__(self) -> GradientFlow:
        if getattr(self.module, "_flow_recorder", None) is not None:
            raise RuntimeError("this module is already being recorded by another GradientFlow")
        self.module._flow_recorder = self
        return self

    def __exit__(self, *exc) -> None:
        self.module._flow_recorder = None
        self._open.clear()  # what backwards that failed left open

    def new_record(self, module, steps: int) -> _Record | None:
        """Called by the module's forward: where its backward's norms go (None: no grad)."""
        if not torch.is_grad_enabled():
            return None
        self._calls += 1
        return _Record(self, module.num_layers * (2 if module.bidirectional else 1), steps, self._calls)

    def summary(self) -> dict[str, Tensor]:
        """Mean, min and max of ||dL/dh_t|| over the records, against steps before the end of
        the chunk (index 0: the last step processed), per layer/direction: [rows, steps]."""
        if not self.records:
            raise RuntimeError("GradientFlow recorded nothing: run a backward through the module inside the context")
        rows, longest = self.records[0].shape[0], max(r.shape[1] for r in self.records)
        aligned = torch.full((len(self.records), rows, longest), float("nan"), dtype=torch.float64)
        directions = 2 if self.module.bidirectional else 1
        for i, r in enumerate(self.records):
            for row in range(rows):
                # forward directions end at the last step, reverse ones at the first
                seq = r[row].flip(0) if row % directions == 0 else r[row]
                aligned[i, row, : seq.shape[0]] = seq
        return {
            "mean": aligned.nanmean(0),
            "min": _nan_reduce(aligned, torch.amin),
            "max": _nan_reduce(aligned, torch.amax),
        }

    def plot(self, path: str) -> None:
        """Writes a PNG of ||dL/dh_t|| against steps before the chunk's end (log scale): one
        line per layer/direction, the mean over the recorded backwards with its min-max band."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        stats = self.summary()
        directions = 2 if self.module.bidirectional else 1
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = torch.arange(stats["mean"].shape[1])
        for row in range(stats["mean"].shape[0]):
            label = f"layer {row // directions}" + (" reverse" if row % directions else "")
            (line,) = ax.plot(steps, stats["mean"][row], label=label)
            ax.fill_between(steps, stats["min"][row], stats["max"][row], color=line.get_color(), alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("steps before the end of the chunk")
        ax.set_ylabel("||dL/dh_t||")
        ax.set_title(f"gradient flow over {len(self.records)} backward(s)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _nan_reduce(x: Tensor, reduce) -> Tensor:
    filled = torch.where(torch.isnan(x), torch.full_like(x, math.inf if reduce is torch.amin else -math.inf), x)
    out = reduce(filled, 0)
    return torch.where(torch.isinf(out), torch.full_like(out, float("nan")), out)


# ------------------------------------------------------- truncation bias probe
@dataclasses.dataclass
class TruncationBias:
    """Result of :func:`truncation_bias`: for each k, how the truncated gradient compares
    with the full gradient of the same window."""

    ks: list[int]
    cosine: list[float]  # cosine similarity of g_k and g_full over all parameters
    relative_error: list[float]  # ||g_k - g_full|| / ||g_full||
    per_parameter: dict[str, dict[str, list[float]]]  # name -> {"cosine": [...], "relative_error": [...]}
    full_gradient_norm: float

    def suggest(self, threshold: float = 0.95) -> int | None:
        """The smallest k whose cosine similarity with the full gradient reaches `threshold`."""
        for k, c in sorted(zip(self.ks, self.cosine)):
            if c >= threshold:
                return k
        return None

    def table(self) -> str:
        lines = [f"{'k':>6} {'cosine':>8} {'rel. error':>11}"]
        lines += [f"{k:>6} {c:>8.4f} {e:>11.4f}" for k, c, e in zip(self.ks, self.cosine, self.relative_error)]
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        """Writes a PNG of the cosine similarity and the relative error against k."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.ks, self.cosine, "o-", label="cosine(g_k, g_full)")
        ax.plot(self.ks, self.relative_error, "s-", label="||g_k - g_full|| / ||g_full||")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("truncation length k")
        ax.axhline(1.0, color="gray", lw=0.5)
        ax.set_title("truncation bias of the gradient")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def truncation_bias(
    model: Callable,
    inputs: Tensor,
    targets: Any,
    loss_fn: Callable[[Tensor, Any], Tensor],
    ks: Sequence[int],
    state: Any = None,
    batch_first: bool = False,
) -> TruncationBias:
    """Measures how much cutting the graph every k steps bends the gradient of a window.

    One loss over the whole window, ``loss_fn(outputs of all steps, targets)``. The full
    gradient backpropagates through the whole window; the truncated gradient for k runs
    the same forward (``model(x_chunk, state) -> (output, state)`` over chunks of k
    steps, outputs concatenated along time) with the state detached between chunks, as
    TBPTT(k) does without optimizer steps. If the model draws random numbers (dropout),
    each k is compared with a full gradient whose forward runs in the same chunks of k
    without detaching: the same calls draw the same masks, in the same order (one more
    forward and backward per k; ``full_gradient_norm`` is the unchunked run's). The
    model's parameters, their ``.grad``, its train/eval mode and the random state are left
    as they were.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad] if hasattr(
        model, "named_parameters") else []
    if not params:
        raise ValueError("truncation_bias: the model has no parameters that require a gradient")
    time_dim = 1 if batch_first else 0
    steps = inputs.shape[time_dim]
    ks = [_positive_int(k, "truncation_bias: each of ks must be a positive integer") for k in ks]
    if not ks:
        raise ValueError("truncation_bias: ks must list at least one positive integer, got none")
    names, tensors = zip(*params)
    devices = [inputs.device] if inputs.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):

        def rng_state():
            return torch.get_rng_state(), (torch.cuda.get_rng_state(inputs.device) if devices else None)

        start = rng_state()

        def gradient(k: int, detach: bool) -> list[Tensor]:
            torch.set_rng_state(start[0])
            if devices:
                torch.cuda.set_rng_state(start[1], inputs.device)
            s, outputs = detach_state(state), []
            for chunk in inputs.split(k, time_dim):
                output, s = model(chunk, s)
                outputs.append(output)
                if detach:
                    s = detach_state(s)
            loss = loss_fn(torch.cat(outputs, time_dim), targets)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]

        full = gradient(steps, detach=False)
        after = rng_state()
        random = not torch.equal(after[0], start[0]) or (devices and not torch.equal(after[1], start[1]))
        truncated = {k: gradient(k, detach=k < steps) for k in ks}
        full_for = {k: gradient(k, detach=False) if random and k < steps else full for k in ks}
    full_flat = torch.cat([g.reshape(-1).double() for g in full])
    full_norm = full_flat.norm().item()
    cosine, rel, per_param = [], [], {n: {"cosine": [], "relative_error": []} for n in names}
    for k in ks:
        flat = torch.cat([g.reshape(-1).double() for g in truncated[k]])
        reference = torch.cat([g.reshape(-1).double() for g in full_for[k]])
        cosine.append(_cosine(flat, reference))
        rel.append(((flat - reference).norm() / reference.norm().clamp_min(1e-300)).item())
        for n, g, f in zip(names, truncated[k], full_for[k]):
            g, f = g.reshape(-1).double(), f.reshape(-1).double()
            per_param[n]["cosine"].append(_cosine(g, f))
            per_param[n]["relative_error"].append(((g - f).norm() / f.norm().clamp_min(1e-300)).item())
    return TruncationBias(ks, cosine, rel, per_param, full_norm)


def _cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity in [-1, 1]: exactly 1.0 for equal vectors (both zero included),
    0.0 when exactly one of them is zero (a truncated gradient that lost everything
    shares no direction with the full one)."""
    if torch.equal(a, b):
        return 1.0
    denominator = a.norm() * b.norm()
    if denominator == 0:
        return 0.0
    cosine = (a @ b / denominator).item()
    return cosine if math.isnan(cosine) else min(1.0, max(-1.0, cosine))  # NaN gradients: NaN
