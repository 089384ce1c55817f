"""Drop-in replacements for torch.nn.RNN, LSTM and GRU on fused chunk kernels.

Same constructor arguments, parameter names, shapes, initialisation and forward
semantics as torch.nn (they derive from torch.nn.RNNBase, so state_dicts load in
both directions), plus the keyword ``backend``:

* ``"auto"`` (default): the fused kernels where one is compiled for the input's
  device and dtype, :mod:`tbptt_ext.reference` otherwise;
* ``"fused"``: the fused kernels, or a RuntimeError saying why there is none;
* ``"reference"``: the plain-PyTorch reference;

and the keyword ``reset`` of ``forward``: a [T, B] bool mask ([B, T] with
batch_first, [T] unbatched) whose True entries restart a row's state at that step.

Per layer and direction, one autograd.Function call runs the whole chunk (input
projection, recurrence, and in backward the recurrence and weight gradients); a
PackedSequence takes one call per run of equal batch size.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import ops
from .functions import chunk_function

BACKENDS = ("auto", "fused", "reference")
_warned_missing_extension = False


def _warn_missing_extension() -> None:
    global _warned_missing_extension
    if not _warned_missing_extension:
        _warned_missing_extension = True
        warnings.warn(
            "tbptt_ext: no compiled kernels in this copy of tbptt_ext, so the plain-PyTorch reference runs "
            "instead (slower). Install with `pip install --no-build-isolation .` to get the fused kernels; if "
            "you did, this is probably the source tree's uncompiled copy shadowing the installed one (python "
            "started in the repository root): run from another directory, use `pip install -e`, or the "
            f"`tbptt-char-lm` command for the example. (Import error: {ops.EXTENSION_ERROR})",
            RuntimeWarning,
            stacklevel=4,
        )


def _check_state_pair(name: str, hx) -> None:
    """An LSTM's hx: a tuple (or list) of two tensors, else a TypeError saying what it is."""
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        got = type(hx).__name__
    elif not all(isinstance(s, Tensor) for s in hx):
        got = f"({', '.join(type(s).__name__ for s in hx)})"
    else:
        return
    raise TypeError(f"{name}: hx must be a tuple (h_0, c_0) of two tensors, got {got}")


class _PackedLayout:
    """Runs of equal batch size of a PackedSequence, and the permutation of its
    rows that reverses every sequence in time (an involution)."""

    def __init__(self, batch_sizes: Tensor, rows: int, device: torch.device):
        sizes = batch_sizes.tolist() if batch_sizes.dim() == 1 else None
        # torch.nn.utils.rnn.pack_* always build valid ones; a hand-built one may not be
        if not sizes or sizes[-1] < 1 or any(a < b for a, b in zip(sizes, sizes[1:])) or sum(sizes) != rows:
            raise ValueError(
                "PackedSequence: batch_sizes must be a non-empty 1-D tensor of positive, non-increasing sizes that "
                f"sum to the number of data rows ({rows}), got {batch_sizes.tolist()}; build it with "
                "torch.nn.utils.rnn.pack_padded_sequence or pack_sequence"
            )
        self.segments: list[tuple[int, int, int]] = []  # (first row, steps, batch)
        start = 0
        for t, size in enumerate(sizes):
            if t == 0 or size != sizes[t - 1]:
                self.segments.append((start, 0, size))
            first, steps, _ = self.segments[-1]
            self.segments[-1] = (first, steps + 1, size)
            start += size
        steps = torch.arange(len(sizes))
        offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
        lengths = (batch_sizes.unsqueeze(1) > torch.arange(sizes[0])).sum(0)
        step_of_row = torch.repeat_interleave(steps, batch_sizes)
        batch_of_row = torch.arange(int(batch_sizes.sum())) - offsets[step_of_row]
        source_step = lengths[batch_of_row] - 1 - step_of_row
        self.reverse_index = (offsets[source_step] + batch_of_row).to(device)


class _Input:
    """The forward's input brought to one shape: time-major x [T, B, I] (or the packed
    rows), how to restore the output, and the batch size the state must have."""

    def __init__(self, x, batch, layout=None, packed_info=None, batched=True):
        self.x, self.batch, self.layout = x, batch, layout
        self.packed_info, self.batched = packed_info, batched


class _ChunkedRNNBase(nn.RNNBase):
    def __init__(self, mode: str, *args, backend: str = "auto", **kwargs):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        super().__init__(mode, *args, **kwargs)
        self.backend = backend
        self._flow_recorder = None  # set by tbptt_ext.diagnostics.GradientFlow

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    @property
    def _has_cell_state(self) -> bool:
        return self.mode == "LSTM"

    # ----------------------------------------------------------------- forward
    def forward(self, input, hx=None, *, reset=None):
        self._refresh_flat_weights()
        inp = self._normalize_input(input)
        hx = self._initial_state(inp, hx)
        states = tuple(hx) if self._has_cell_state else (hx,)
        dtype = self._autocast_dtype(inp.x)
        if dtype is None:
            return self._forward(inp, states, reset, input, None)
        # torch.autocast: input, state and parameters cast to one dtype, autocast off inside
        inp.x = inp.x.to(dtype)
        with torch.autocast(inp.x.device.type, enabled=False):
            return self._forward(inp, tuple(s.to(dtype) for s in states), reset, input, dtype)

    def _forward(self, inp: _Input, states: tuple[Tensor, ...], reset, input, dtype):
        self._check_state_tensors(inp.x, states)
        reset = self._normalize_reset(reset, input, inp)
        fused = self._use_fused(inp.x)
        output, final = self._run_layers(inp, states, reset, fused, dtype)
        return self._restore_output(inp, output, final)

    def _refresh_flat_weights(self) -> None:
        """As torch.nn's forward: _flat_weights as the parameters are now (assigned,
        parametrized, or swapped in by torch.func.functional_call), for the checks and the
        layers alike. When they are the module's own parameters, unchanged, a check of
        identities (~1 us) instead of torch.nn's (~11 us for one layer)."""
        params, flat = self._parameters, self._flat_weights
        if len(flat) == len(self._flat_weights_names) and all(
                w is not None and params.get(n) is w for n, w in zip(self._flat_weights_names, flat)):
            return
        self._update_flat_weights()

    def _autocast_dtype(self, x: Tensor) -> torch.dtype | None:
        """Under torch.autocast for x's device, the dtype the layers run in: the autocast
        dtype where a fused kernel exists for it (CUDA: float16, bfloat16), else float32 (the
        CPU kernels: float32 and float64). None without autocast; autocast leaves float64
        alone, as it does for torch.nn."""
        device = x.device.type
        if not torch.amp.is_autocast_available(device):  # e.g. meta: asking would raise
            return None
        if not torch.is_autocast_enabled(device) or torch.float64 in (x.dtype, self._flat_weights[0].dtype):
            return None
        dtype = torch.get_autocast_dtype(device)
        return dtype if ops.has_fused_kernel(device, dtype) else torch.float32

    def _normalize_input(self, input) -> _Input:
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            layout = _PackedLayout(batch_sizes, data.shape[0], data.device)
            return _Input(data, int(batch_sizes[0]), layout, (batch_sizes, sorted_indices, unsorted_indices))
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor or PackedSequence, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(0 if self.batch_first else 1)
        x = x.transpose(0, 1) if self.batch_first else x
        if x.shape[0] == 0:  # as torch.nn
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        return _Input(x, x.shape[1], batched=batched)

    def _initial_state(self, inp: _Input, hx):
        batch_sizes = inp.packed_info[0] if inp.packed_info else None
        if hx is None:
            directions = 2 if self.bidirectional else 1
            h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
            h = inp.x.new_zeros((self.num_layers * directions, inp.batch, h_size))
            c = inp.x.new_zeros((self.num_layers * directions, inp.batch, self.hidden_size))
            hx = (h, c) if self._has_cell_state else h
        elif inp.packed_info:
            hx = self.permute_hidden(hx, inp.packed_info[1])
        else:
            hx = self._check_hx_dims(hx, inp.batched)
        # torch.nn's checks and messages (check_forward_args wants the batch-major view).
        self.check_forward_args(inp.x if inp.packed_info else self._as_given(inp.x), hx, batch_sizes)
        return hx

    def _as_given(self, x: Tensor) -> Tensor:
        return x.transpose(0, 1) if self.batch_first else x

    def _normalize_reset(self, reset, input, inp: _Input) -> Tensor | None:
        if reset is None:
            return None
        name = type(self).__name__
        if inp.packed_info:
            raise ValueError(
                f"{name}: reset is not supported with PackedSequence input; pass a padded tensor and its "
                "[T, B] reset mask instead"
            )
        if not isinstance(reset, Tensor):
            raise TypeError(f"{name}: reset must be a bool tensor, got {type(reset).__name__}")
        if reset.dtype != torch.bool and (reset.dtype.is_floating_point or reset.dtype.is_complex):
            raise TypeError(f"{name}: reset must be a bool (or integer, nonzero = reset) tensor, got {reset.dtype}")
        steps, batch = inp.x.shape[0], inp.x.shape[1]
        if not inp.batched:
            expected, layout = (steps,), "[T]"
        elif self.batch_first:
            expected, layout = (batch, steps), "[B, T] (batch_first=True)"
        else:
            expected, layout = (steps, batch), "[T, B]"
        if tuple(reset.shape) != expected:
            raise ValueError(f"{name}: reset must have shape {layout} = {list(expected)}, got {list(reset.shape)}")
        if reset.device != inp.x.device:
            raise RuntimeError(f"{name}: reset must be on the input's device {inp.x.device}, got {reset.device}")
        reset = reset if reset.dtype == torch.bool else reset != 0
        if not inp.batched:
            reset = reset.unsqueeze(1)
        elif self.batch_first:
            reset = reset.t()
        return reset.contiguous()

    def _run_layers(self, inp: _Input, states: tuple[Tensor, ...], reset, fused, dtype=None):
        directions = 2 if self.bidirectional else 1
        recorder = getattr(self, "_flow_recorder", None)  # tbptt_ext.diagnostics.GradientFlow
        flow = None
        if recorder is not None:
            segments = inp.layout.segments if inp.layout else [(0, inp.x.shape[0], inp.batch)]
            flow = recorder.new_record(self, sum(steps for _, steps, _ in segments))
        x, final = inp.x, [[] for _ in states]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                out, state = self._run_direction(
                    x, inp.layout, layer, direction == 1, tuple(s[index] for s in states), reset, fused, dtype,
                    (lambda offset, row=index: flow.slot(row, offset)) if flow is not None else None,
                )
                outputs.append(out)
                for i, s in enumerate(state):
                    final[i].append(s)
            x = outputs[0] if directions == 1 else torch.cat(outputs, -1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x, tuple(torch.stack(f, 0) for f in final)

    def _restore_output(self, inp: _Input, output: Tensor, final: tuple[Tensor, ...]):
        hidden = final if self._has_cell_state else final[0]
        if inp.packed_info:
            batch_sizes, sorted_indices, unsorted_indices = inp.packed_info
            return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(hidden, unsorted_indices))
        output = self._as_given(output)
        if not inp.batched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = tuple(h.squeeze(1) for h in hidden) if self._has_cell_state else hidden.squeeze(1)
        return output, hidden

    # ------------------------------------------------------------------ cells
    def _layer_params(self, layer: int, reverse: bool, dtype=None):
        """The layer's parameters, cast to dtype (under autocast) where they differ."""
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        # from _flat_weights (refreshed by forward), so that a parametrization is evaluated
        # as often as in torch.nn (a stateful one, e.g. spectral_norm's power iteration, then
        # trains alike)
        weights = dict(zip(self._flat_weights_names, self._flat_weights))
        w_ih = weights["weight_ih" + suffix]
        w_hh = weights["weight_hh" + suffix]
        b_ih = weights["bias_ih" + suffix] if self.bias else None
        b_hh = weights["bias_hh" + suffix] if self.bias else None
        w_hr = weights["weight_hr" + suffix] if self.proj_size > 0 else None
        params = (w_ih, w_hh, b_ih, b_hh, w_hr)
        if dtype is None:
            return params
        return tuple(p if p is None or p.dtype == dtype else p.to(dtype) for p in params)

    def _run_cell(self, x, params, state, reset, reverse, fused, flow):
        """One autograd.Function call: x [T, B, I] -> (output [T, B, H], final state)."""
        w_ih, w_hh, b_ih, b_hh, w_hr = params
        if self.mode == "LSTM":
            out, h, c, _ = chunk_function("LSTM").apply(x, w_ih, w_hh, b_ih, b_hh, state[0], state[1], reset,
                                                        reverse, fused, flow, w_hr)
            return out, (h, c)
        if self.mode == "GRU":
            out, h, _ = chunk_function("GRU").apply(x, w_ih, w_hh, b_ih, b_hh, state[0], reset, reverse, fused,
                                                    flow)
            return out, (h,)
        out, h = chunk_function("RNN").apply(x, w_ih, w_hh, b_ih, b_hh, state[0], reset, reverse,
                                             self.mode == "RNN_RELU", fused, flow)
        return out, (h,)

    def _run_direction(self, x, layout, layer, reverse, state, reset, fused, dtype, flow_slot):
        """flow_slot(time offset): where a call's gradient-flow record goes, or None."""
        params = self._layer_params(layer, reverse, dtype)
        if layout is None:
            return self._run_cell(x, params, state, reset, reverse, fused, flow_slot and flow_slot(0))
        # PackedSequence: rows are time-major, batch sorted by decreasing length; each
        # run of equal batch size is one chunk call, finished sequences keep their state.
        # The reverse direction runs forward over the rows reversed within each sequence.
        if reverse:
            x = x.index_select(0, layout.reverse_index)
        outs, offset = [], 0
        for first, steps, batch in layout.segments:
            seg = x[first : first + steps * batch].view(steps, batch, x.shape[-1])
            flow = flow_slot and flow_slot(offset)
            offset += steps
            out, new_state = self._run_cell(seg, params, tuple(s[:batch] for s in state), None, False, fused, flow)
            state = tuple(
                n if batch == s.shape[0] else torch.cat([n, s[batch:]], 0) for n, s in zip(new_state, state)
            )
            outs.append(out.reshape(steps * batch, out.shape[-1]))
        out = torch.cat(outs, 0)
        return (out.index_select(0, layout.reverse_index) if reverse else out), state

    # ------------------------------------------------------------------ checks
    def _use_fused(self, input: Tensor) -> bool:
        if self.backend == "reference":
            return False
        device, dtype = input.device.type, input.dtype
        if self.proj_size > 0 and device != "cpu":  # projections are fused on the CPU only
            if self.backend == "fused":
                raise RuntimeError(
                    f"{type(self).__name__}(backend='fused'): LSTM projections (proj_size > 0) have fused kernels "
                    f"on the CPU only, not on '{device}'. Use backend='auto' to run the reference there."
                )
            return False
        if ops.has_fused_kernel(device, dtype):
            return True
        if self.backend == "fused":
            compiled = sorted(ops.compiled_backends())
            raise RuntimeError(
                f"{type(self).__name__}(backend='fused'): no fused kernel for device '{device}' "
                f"and dtype {dtype}. Compiled backends: {compiled or 'none'}"
                + (f" (extension not loaded: {ops.EXTENSION_ERROR})" if ops.EXTENSION_ERROR else "")
                + "; dtypes per backend: "
                + ", ".join(f"{k}: {sorted(str(d) for d in v)}" for k, v in ops.FUSED_DTYPES.items())
                + ". Use backend='auto' or 'reference' to run the reference."
            )
        if ops.EXTENSION_ERROR is not None:
            _warn_missing_extension()
        return False

    def _check_state_tensors(self, input: Tensor, states: tuple[Tensor, ...]) -> None:
        weight = self._flat_weights[0]
        if input.device != weight.device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor at "
                f"{input.device} and parameter tensor at {weight.device}"
            )
        for name, s in zip(("hx", "cx"), states):
            if s.device != input.device:
                raise RuntimeError(
                    f"Input and hidden tensors are not at the same device, found input tensor at "
                    f"{input.device} and {name} tensor at {s.device}"
                )
            if s.dtype != input.dtype:  # RuntimeError, as torch.nn's kernels raise
                raise RuntimeError(
                    f"{name} dtype ({s.dtype}) does not match input dtype ({input.dtype}); "
                    f"convert it: {name}.to({input.dtype})"
                )

    def _check_hx_dims(self, hx, is_batched: bool):
        want = 3 if is_batched else 2
        kind = "batched 3-D" if is_batched else "unbatched 2-D"
        if self._has_cell_state:
            _check_state_pair(type(self).__name__, hx)
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
            return (hx[0], hx[1]) if is_batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if not isinstance(hx, Tensor):
            raise TypeError(f"{type(self).__name__}: hx must be a Tensor, got {type(hx).__name__}")
        if hx.dim() != want:
            raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor")
        return hx if is_batched else hx.unsqueeze(1)


class RNN(_ChunkedRNNBase):
    """Drop-in torch.nn.RNN (tanh or relu) on fused chunk kernels; see the module docstring."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
    ):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(
            "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU",
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device=device, dtype=dtype, backend=backend,
        )


class LSTM(_ChunkedRNNBase):
    """Drop-in torch.nn.LSTM on fused chunk kernels, proj_size included; see the module
    docstring. With proj_size > 0 the CUDA path runs the reference."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
    ):
        super().__init__(
            "LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size=proj_size, device=device, dtype=dtype, backend=backend,
        )

    def get_expected_cell_size(self, input: Tensor, batch_sizes: Tensor | None):
        """[layers x directions, batch, hidden_size]: c is never projected."""
        batch = int(batch_sizes[0]) if batch_sizes is not None else input.size(0 if self.batch_first else 1)
        return (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)

    def check_forward_args(self, input, hidden, batch_sizes):
        _check_state_pair("LSTM", hidden)
        self.check_input(input, batch_sizes)
        expected = self.get_expected_hidden_size(input, batch_sizes)
        self.check_hidden_size(hidden[0], expected, "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hidden[1], self.get_expected_cell_size(input, batch_sizes),
                               "Expected hidden[1] size {}, got {}")

    def permute_hidden(self, hx, permutation):
        if permutation is None:
            return hx
        _check_state_pair("LSTM", hx)
        return hx[0].index_select(1, permutation), hx[1].index_select(1, permutation)


class GRU(_ChunkedRNNBase):
    """Drop-in torch.nn.GRU on fused chunk kernels; see the module docstring."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
    ):
        super().__init__(
            "GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device=device, dtype=dtype, backend=backend,
        )
