"""Drop-in replacements for torch.nn.RNN, LSTM and GRU on fused chunk kernels.

Same constructor arguments, parameter names, shapes, initialisation and forward
semantics as torch.nn (they derive from torch.nn.RNNBase, so state_dicts load in
both directions), plus the keyword ``backend``:

* ``"auto"`` (default): the fused kernels where one is compiled for the input's
  device and dtype, :mod:`tbptt_ext.reference` otherwise;
* ``"fused"``: the fused kernels, or a RuntimeError saying why there is none;
* ``"reference"``: the plain-PyTorch reference.

Per layer and direction, the input projection of the whole sequence is one GEMM,
then one autograd.Function call runs the recurrence over all steps (one call per
run of equal batch size for a PackedSequence).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _ops
from .functions import GRUChunk, LSTMChunk, RNNChunk

BACKENDS = ("auto", "fused", "reference")
_warned_missing_extension = False


def _warn_missing_extension() -> None:
    global _warned_missing_extension
    if not _warned_missing_extension:
        _warned_missing_extension = True
        warnings.warn(
            "tbptt_ext: the compiled extension could not be loaded "
            f"({_ops.EXTENSION_ERROR}); running the plain-PyTorch reference instead. "
            "Install with `pip install --no-build-isolation .` to get the fused kernels; if you did, "
            "this is probably the source tree's copy of tbptt_ext shadowing the installed one (python "
            "started in the repository root): run from another directory, use `pip install -e`, or the "
            "`tbptt-char-lm` command for the example.",
            RuntimeWarning,
            stacklevel=3,
        )


class _PackedLayout:
    """Runs of equal batch size of a PackedSequence, and the permutation of its
    rows that reverses every sequence in time (an involution)."""

    def __init__(self, batch_sizes: Tensor, device: torch.device):
        sizes = batch_sizes.tolist()
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


class _ChunkedRNNBase(nn.RNNBase):
    _state_count = 1  # tensors in the recurrent state: 1 (h) or 2 (h, c)

    def __init__(self, mode: str, *args, backend: str = "auto", **kwargs):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        super().__init__(mode, *args, **kwargs)
        self.backend = backend

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    # ------------------------------------------------------------------ cells
    def _project(self, x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor:
        bias = b_ih + b_hh if b_ih is not None else None
        return F.linear(x, w_ih, bias)

    def _recur(self, xproj, state, w_hh, b_hh, fused):  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ checks
    def _use_fused(self, input: Tensor) -> bool:
        if self.backend == "reference":
            return False
        device, dtype = input.device.type, input.dtype
        if _ops.has_fused_kernel(device, dtype):
            return True
        if self.backend == "fused":
            compiled = sorted(_ops.compiled_backends())
            raise RuntimeError(
                f"{type(self).__name__}(backend='fused'): no fused kernel for device '{device}' "
                f"and dtype {dtype}. Compiled backends: {compiled or 'none'}"
                + (f" (extension not loaded: {_ops.EXTENSION_ERROR})" if _ops.EXTENSION_ERROR else "")
                + f"; dtypes per backend: "
                + ", ".join(f"{k}: {sorted(str(d) for d in v)}" for k, v in _ops.FUSED_DTYPES.items())
                + ". Use backend='auto' or 'reference' to run the reference."
            )
        if _ops.EXTENSION_ERROR is not None:
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
            if s.dtype != input.dtype:
                raise ValueError(
                    f"{name} dtype ({s.dtype}) does not match input dtype ({input.dtype}); "
                    f"convert it: {name}.to({input.dtype})"
                )

    # ----------------------------------------------------------------- forward
    def forward(self, input, hx=None):
        name = type(self).__name__
        is_lstm = self._state_count == 2
        num_directions = 2 if self.bidirectional else 1
        packed = isinstance(input, PackedSequence)
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if packed:
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch = int(batch_sizes[0])
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if not isinstance(input, Tensor):
                raise TypeError(f"{name}: input must be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch = input.size(batch_dim)
            if hx is not None:
                hx = self._check_hx_dims(hx, is_batched)
        if hx is None:
            hidden_shape = (self.num_layers * num_directions, max_batch, self.hidden_size)
            zeros = torch.zeros(hidden_shape, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros) if is_lstm else zeros
        self.check_forward_args(input, hx, batch_sizes)
        states = tuple(hx) if is_lstm else (hx,)
        self._check_state_tensors(input, states)
        fused = self._use_fused(input)

        if packed:
            layout = _PackedLayout(batch_sizes, input.device)
            x = input
        else:
            layout = None
            x = input.transpose(0, 1) if self.batch_first else input
            if x.shape[0] == 0:  # as torch.nn
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        final = [[] for _ in states]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                index = layer * num_directions + direction
                out, state = self._run_direction(
                    x, layer, direction == 1, tuple(s[index] for s in states), fused, layout
                )
                outputs.append(out)
                for i, s in enumerate(state):
                    final[i].append(s)
            x = outputs[0] if num_directions == 1 else torch.cat(outputs, -1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        hidden = tuple(torch.stack(f, 0) for f in final)
        hidden = hidden if is_lstm else hidden[0]

        if packed:
            return PackedSequence(x, batch_sizes, sorted_indices, unsorted_indices), self.permute_hidden(
                hidden, unsorted_indices
            )
        output = x.transpose(0, 1) if self.batch_first else x
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = tuple(h.squeeze(1) for h in hidden) if is_lstm else hidden.squeeze(1)
        return output, hidden

    def _check_hx_dims(self, hx, is_batched: bool):
        want = 3 if is_batched else 2
        kind = "batched 3-D" if is_batched else "unbatched 2-D"
        if self._state_count == 2:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(
                    f"{type(self).__name__}: hx must be a tuple (h_0, c_0) of two tensors, got "
                    f"{type(hx).__name__}"
                )
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

    def _layer_params(self, layer: int, reverse: bool):
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        w_ih = getattr(self, "weight_ih" + suffix)
        w_hh = getattr(self, "weight_hh" + suffix)
        b_ih = getattr(self, "bias_ih" + suffix) if self.bias else None
        b_hh = getattr(self, "bias_hh" + suffix) if self.bias else None
        return w_ih, w_hh, b_ih, b_hh

    def _run_direction(self, x, layer, reverse, state, fused, layout):
        w_ih, w_hh, b_ih, b_hh = self._layer_params(layer, reverse)
        xproj = self._project(x, w_ih, b_ih, b_hh)
        if layout is None:
            if reverse:
                xproj = xproj.flip(0)
            out, state = self._recur(xproj, state, w_hh, b_hh, fused)
            return (out.flip(0) if reverse else out), state
        # PackedSequence: rows are time-major, batch sorted by decreasing length; each
        # run of equal batch size is one chunk call, finished sequences keep their state.
        if reverse:
            xproj = xproj.index_select(0, layout.reverse_index)
        outs = []
        for first, steps, batch in layout.segments:
            seg = xproj[first : first + steps * batch].view(steps, batch, xproj.shape[-1])
            out, new_state = self._recur(seg, tuple(s[:batch] for s in state), w_hh, b_hh, fused)
            state = tuple(
                n if batch == s.shape[0] else torch.cat([n, s[batch:]], 0) for n, s in zip(new_state, state)
            )
            outs.append(out.reshape(steps * batch, out.shape[-1]))
        out = torch.cat(outs, 0)
        return (out.index_select(0, layout.reverse_index) if reverse else out), state


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

    def _recur(self, xproj, state, w_hh, b_hh, fused):
        out, h_n = RNNChunk.apply(xproj, w_hh, state[0], self.nonlinearity == "relu", fused)
        return out, (h_n,)


class LSTM(_ChunkedRNNBase):
    """Drop-in torch.nn.LSTM on fused chunk kernels; see the module docstring.

    proj_size > 0 (LSTM with projections) is not implemented and raises
    NotImplementedError.
    """

    _state_count = 2

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
        if proj_size != 0:
            raise NotImplementedError(
                f"tbptt_ext.LSTM does not support proj_size > 0 (got proj_size={proj_size}); "
                "use torch.nn.LSTM for LSTMs with projections"
            )
        super().__init__(
            "LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device=device, dtype=dtype, backend=backend,
        )

    def get_expected_cell_size(self, input: Tensor, batch_sizes: Tensor | None):
        return self.get_expected_hidden_size(input, batch_sizes)

    def check_forward_args(self, input, hidden, batch_sizes):
        if not isinstance(hidden, (tuple, list)) or len(hidden) != 2:
            raise TypeError(
                f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {type(hidden).__name__}"
            )
        self.check_input(input, batch_sizes)
        expected = self.get_expected_hidden_size(input, batch_sizes)
        self.check_hidden_size(hidden[0], expected, "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hidden[1], expected, "Expected hidden[1] size {}, got {}")

    def permute_hidden(self, hx, permutation):
        if permutation is None:
            return hx
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")
        return hx[0].index_select(1, permutation), hx[1].index_select(1, permutation)

    def _recur(self, xproj, state, w_hh, b_hh, fused):
        out, h_n, c_n = LSTMChunk.apply(xproj, w_hh, state[0], state[1], fused)
        return out, (h_n, c_n)


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

    def _project(self, x, w_ih, b_ih, b_hh):
        return F.linear(x, w_ih, b_ih)  # b_hh stays inside the cell: r * (W_hn h + b_hn)

    def _recur(self, xproj, state, w_hh, b_hh, fused):
        out, h_n = GRUChunk.apply(xproj, w_hh, b_hh, state[0], fused)
        return out, (h_n,)
