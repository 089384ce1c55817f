"""Truncated backpropagation through time: TBPTT(k1, k2) after Williams & Peng.

The sequence is split into chunks of k1 steps (the last may be shorter); n = k2 / k1.
Update c runs the model over the window of chunks s = max(0, c - n + 1) .. c from
the detached state at the start of chunk s, with gradients through the whole
window, takes loss_fn(output of chunk c, targets of chunk c), backpropagates,
clips, steps the optimizer and zeroes the gradients. The next window's anchor is
the detached state after chunk s as computed in this window. With k2 == k1 this is
the usual loop::

    for x_chunk, y_chunk in chunks:
        output, state = model(x_chunk, state)
        state = detach_state(state)
        loss = loss_fn(output, y_chunk)
        loss.backward(); optimizer.step(); optimizer.zero_grad()
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import operator
import time
from typing import Any, Callable, Iterable

import torch
from torch import Tensor


def _positive_int(value, message: str) -> int:
    """`value` as an int if it is an integer >= 1 (a Python or NumPy integer, not a bool or
    a float), else a ValueError with `message` and the value."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < 1:
        raise ValueError(f"{message}, got {value!r}")
    return number


def detach_state(state: Any) -> Any:
    """Detaches every tensor in a nested state (tensor, tuple, list, dict or None),
    keeping the structure (namedtuples included). A tensor that is a view of a
    larger buffer (e.g. the last step of an output sequence) is copied, so the
    carried state does not keep that buffer alive."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        detached = state.detach()
        if detached.untyped_storage().nbytes() > detached.numel() * detached.element_size():
            detached = detached.clone()
        return detached
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # namedtuple
        return type(state)(*(detach_state(s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    if isinstance(state, dict):
        detached = copy.copy(state)  # the same type, with e.g. a defaultdict's factory
        for k, v in state.items():
            detached[k] = detach_state(v)
        return detached
    raise TypeError(
        f"detach_state: expected a tensor, tuple, list, dict or None, got {type(state).__name__}"
    )


def _flatten(state: Any) -> list[Tensor]:
    """The tensors of a nested state, in order."""
    if state is None:
        return []
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _flatten(v)]
    return [t for s in state for t in _flatten(s)]


@dataclasses.dataclass
class TBPTTUpdate:
    """What the per-update callback receives."""

    update: int  # index of this update, from 0
    loss: float
    steps: int  # time steps consumed so far
    steps_per_second: float  # time steps per second since the run started


@dataclasses.dataclass
class TBPTTResult:
    losses: list[float]  # one per update
    state: Any  # the detached state after the last chunk


class TBPTT:
    """Trains ``model(x_chunk, state) -> (output, new_state)`` with TBPTT(k1, k2).

    Args:
        model: any module or callable with the torch.nn.RNN convention (an RNN, or an
            RNN with a head); tbptt_ext and torch.nn modules both work.
        optimizer: steps the parameters; gradients are clipped over its parameters.
        loss_fn: ``loss_fn(output, targets) -> scalar tensor`` for one chunk.
        k1: chunk length (steps between updates), >= 1.
        k2: backpropagation length, a multiple of k1 (default k1).
        max_grad_norm: clip the total gradient norm to this before each step.
        batch_first: time is dim 1 of inputs and targets instead of dim 0.
        callback: called after every update with a :class:`TBPTTUpdate`.
        progress: show a tqdm progress bar (needs ``pip install tqdm``).
    """

    def __init__(
        self,
        model: Callable,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Any, Any], Tensor],
        k1: int,
        k2: int | None = None,
        max_grad_norm: float | None = None,
        batch_first: bool = False,
        callback: Callable[[TBPTTUpdate], None] | None = None,
        progress: bool = False,
    ):
        k1 = _positive_int(k1, "k1 must be an integer >= 1")
        k2 = k1 if k2 is None else _positive_int(k2, f"k2 must be a multiple of k1 = {k1} (k1, 2*k1, ...)")
        if k2 < k1 or k2 % k1 != 0:
            raise ValueError(f"k2 must be a multiple of k1 = {k1} (k1, 2*k1, ...), got {k2!r}")
        if max_grad_norm is not None:
            try:
                norm = None if isinstance(max_grad_norm, (bool, str)) else float(max_grad_norm)
            except (TypeError, ValueError, RuntimeError):
                norm = None
            if norm is None or not norm > 0:
                raise ValueError(f"max_grad_norm must be a positive number or None, got {max_grad_norm!r}")
            max_grad_norm = norm
        if not callable(model) or not callable(loss_fn):
            raise ValueError(f"model and loss_fn must be callables, got {type(model).__name__} and "
                             f"{type(loss_fn).__name__}")
        if not all(callable(getattr(optimizer, name, None)) for name in ("step", "zero_grad")) or not hasattr(
                optimizer, "param_groups"):
            raise ValueError("optimizer must be a torch.optim.Optimizer (with step, zero_grad and param_groups), got "
                             f"{type(optimizer).__name__}")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.k1, self.k2, self.window = k1, k2, k2 // k1
        self.max_grad_norm, self.batch_first = max_grad_norm, batch_first
        self.callback, self.progress = callback, progress

    # ------------------------------------------------------------------ input
    def _chunks(self, inputs: Tensor, targets: Tensor, resets: Tensor | None) -> list:
        time_dim = 1 if self.batch_first else 0
        named = [("inputs", inputs), ("targets", targets)] + ([("resets", resets)] if resets is not None else [])
        for name, t in named:
            if not isinstance(t, Tensor):
                raise ValueError(f"{name} must be a tensor (or pass an iterable of (x, y) chunks), got {type(t).__name__}")
            if t.dim() <= time_dim:
                raise ValueError(
                    f"{name} must have a time dimension at dim {time_dim} "
                    f"({'batch_first' if self.batch_first else 'time first'}), got a {t.dim()}-D tensor"
                )
        for name, t in named[1:]:
            if t.shape[time_dim] != inputs.shape[time_dim]:
                raise ValueError(
                    f"inputs and {name} must have the same length along time (dim {time_dim}), got "
                    f"{inputs.shape[time_dim]} and {t.shape[time_dim]}"
                )
        return list(zip(*(t.split(self.k1, time_dim) for _, t in named)))

    # -------------------------------------------------------------------- run
    def run(self, inputs: Tensor | Iterable, targets: Tensor | None = None, state: Any = None,
            resets: Tensor | None = None) -> TBPTTResult:
        """Trains over ``inputs``/``targets`` (tensors split into chunks of k1 steps), or
        over ``inputs`` given as an iterable of (x_chunk, y_chunk) pairs or (x_chunk,
        y_chunk, reset_chunk) triples (targets None; each is one chunk as given, whatever
        its length, and a window is the last k2 / k1 of them), starting from ``state``. With
        ``resets`` (a bool tensor with the time dimension of ``inputs``: [T, B], or [B, T]
        with batch_first) or triples, each chunk runs as ``model(x_chunk, state,
        reset=reset_chunk)``: True restarts a row's state at that step (episode or
        document boundaries). Returns the losses and the final detached state."""
        if targets is None:
            if isinstance(inputs, Tensor):
                raise ValueError("targets is required when inputs is a tensor")
            if resets is not None:
                raise ValueError("resets goes with tensor inputs; with an iterable, yield (x, y, reset) triples")
            chunks: Iterable = inputs
            total = len(inputs) if hasattr(inputs, "__len__") else None
        else:
            chunks = self._chunks(inputs, targets, resets)
            total = len(chunks)
        bar = self._progress_bar(total)
        time_dim = 1 if self.batch_first else 0
        window: collections.deque = collections.deque(maxlen=self.window)
        anchor = state = detach_state(state)  # anchor: state at the start of the window's first chunk
        losses: list[float] = []
        steps, started = 0, time.perf_counter()
        for c, pair in enumerate(chunks):
            if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
                raise ValueError(
                    f"chunk {c}: expected an (x_chunk, y_chunk) pair or (x_chunk, y_chunk, reset_chunk) triple, "
                    f"got {type(pair).__name__}"
                )
            window.append(pair)
            value, state, after_first = self._update(window, anchor)
            if len(window) == self.window:  # the next window starts one chunk later
                anchor = after_first
            losses.append(value)
            steps += pair[0].shape[time_dim]
            self._report(c, losses, steps, started, bar)
        if bar is not None:
            bar.close()
        return TBPTTResult(losses=losses, state=state)

    def _update(self, window, anchor):
        """One update over the chunks in `window` from `anchor`. Returns the loss, the
        detached state after the last chunk and the detached state after the first."""
        state = anchor
        for j, chunk in enumerate(window):
            x_chunk = chunk[0]
            output, state = self.model(x_chunk, state) if len(chunk) == 2 else self.model(x_chunk, state,
                                                                                           reset=chunk[2])
            if j == 0:
                after_first = detach_state(state)
        loss = self.loss_fn(output, window[-1][1])
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar tensor, got {shape}")
        loss.backward()
        if self.max_grad_norm is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item(), detach_state(state), after_first

    def _progress_bar(self, total):
        if not self.progress:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError as exc:
            raise ImportError("TBPTT(progress=True) needs tqdm: pip install tqdm") from exc
        return tqdm(total=total, unit="chunk", dynamic_ncols=True)

    def _report(self, c, losses, steps, started, bar):
        elapsed = max(time.perf_counter() - started, 1e-9)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", steps_per_s=f"{steps / elapsed:,.0f}")
        if self.callback is not None:
            self.callback(TBPTTUpdate(update=c, loss=losses[-1], steps=steps, steps_per_second=steps / elapsed))
