"""tbptt_ext: fused RNN/LSTM/GRU chunk kernels for truncated backpropagation through time."""

from . import diagnostics, ops, reference
from .ops import compiled_backends
from .functions import GRUChunk, LSTMChunk, RNNChunk
from .modules import GRU, LSTM, RNN
from .tbptt import TBPTT, TBPTTResult, TBPTTUpdate, detach_state

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "RNNChunk",
    "LSTMChunk",
    "GRUChunk",
    "compiled_backends",
    "diagnostics",
    "ops",
    "reference",
    "TBPTT",
    "TBPTTResult",
    "TBPTTUpdate",
    "detach_state",
]
__version__ = "0.1.0"
