"""Every bad call raises a Python exception that names what was wrong."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import tbptt_ext

MODULES = ["RNN", "LSTM", "GRU"]


def make(name, **kwargs):
    return getattr(tbptt_ext, name)(4, 5, **kwargs)


def state(name, shape, **kwargs):
    h = torch.randn(shape, **kwargs)
    return (h, torch.randn(shape, **kwargs)) if name == "LSTM" else h


@pytest.mark.parametrize("name", MODULES)
def test_wrong_feature_size(name):
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 4, got 3"):
        make(name)(torch.randn(2, 3, 3))


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("shape", [(), (4,), (1, 2, 3, 4)])
def test_wrong_input_dims(name, shape):
    with pytest.raises(ValueError, match=f"Expected input to be 2D or 3D, got {len(shape)}D"):
        make(name)(torch.randn(shape))


@pytest.mark.parametrize("name", MODULES)
def test_hx_wrong_shape(name):
    m = make(name, num_layers=2, bidirectional=True)
    x = torch.randn(3, 2, 4)
    for bad in [(2, 2, 5), (4, 3, 5), (4, 2, 6)]:
        with pytest.raises(RuntimeError, match=r"Expected hidden(\[0\])? size \(4, 2, 5\)"):
            m(x, state(name, bad))


@pytest.mark.parametrize("name", MODULES)
def test_hx_wrong_dims(name):
    with pytest.raises(RuntimeError, match="hx .*should also be 3-D"):
        make(name)(torch.randn(3, 2, 4), state(name, (2, 5)))
    with pytest.raises(RuntimeError, match="hx .*should also be 2-D"):
        make(name)(torch.randn(3, 4), state(name, (1, 1, 5)))


def test_lstm_cell_state_wrong_shape():
    m = make("LSTM")
    with pytest.raises(RuntimeError, match=r"Expected hidden\[1\] size \(1, 2, 5\), got \[1, 3, 5\]"):
        m(torch.randn(3, 2, 4), (torch.randn(1, 2, 5), torch.randn(1, 3, 5)))


@pytest.mark.parametrize("hx", [torch.randn(1, 2, 5), [torch.randn(1, 2, 5)], "h", (torch.randn(1, 2, 5), None),
                                (None, torch.randn(1, 2, 5))])
def test_lstm_hx_not_a_tuple(hx):
    with pytest.raises(TypeError, match="hx must be a tuple \\(h_0, c_0\\)"):
        make("LSTM")(torch.randn(3, 2, 4), hx)
    with pytest.raises(TypeError, match="hx must be a tuple \\(h_0, c_0\\)"):  # PackedSequence input too
        make("LSTM")(pack_padded_sequence(torch.randn(3, 2, 4), [3, 2]), hx)


@pytest.mark.parametrize("name", ["RNN", "GRU"])
def test_rnn_hx_not_a_tensor(name):
    with pytest.raises(TypeError, match="hx must be a Tensor"):
        make(name)(torch.randn(3, 2, 4), (torch.randn(1, 2, 5), torch.randn(1, 2, 5)))


@pytest.mark.parametrize("name", MODULES)
def test_dtype_mismatch(name):
    with pytest.raises(ValueError, match="input dtype \\(torch.float64\\) does not match weight dtype"):
        make(name)(torch.randn(3, 2, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="hx dtype \\(torch.float64\\) does not match input dtype"):
        make(name)(torch.randn(3, 2, 4), state(name, (1, 2, 5), dtype=torch.float64))


@pytest.mark.parametrize("name", MODULES)
def test_integer_input(name):
    with pytest.raises(ValueError, match="input dtype \\(torch.int64\\) does not match weight dtype"):
        make(name)(torch.ones(3, 2, 4, dtype=torch.long))


@pytest.mark.parametrize("name", MODULES)
def test_different_devices(name):
    m = make(name).to("meta")
    with pytest.raises(RuntimeError, match="not at the same device"):
        m(torch.randn(3, 2, 4))
    with pytest.raises(RuntimeError, match="not at the same device"):
        make(name)(torch.randn(3, 2, 4), state(name, (1, 2, 5), device="meta"))


@pytest.mark.parametrize("name", MODULES)
def test_unknown_backend(name):
    with pytest.raises(ValueError, match="backend must be one of \\('auto', 'fused', 'reference'\\), got 'cudnn'"):
        make(name, backend="cudnn")


@pytest.mark.parametrize("name", MODULES)
def test_fused_backend_without_kernel(name):
    m = make(name, backend="fused", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="no fused kernel for device 'cpu' and dtype torch.float16"):
        m(torch.randn(3, 2, 4, dtype=torch.float16))


@pytest.mark.parametrize("name", MODULES)
def test_zero_length_sequence_like_torch_nn(name):
    x = torch.randn(0, 2, 4)
    with pytest.raises(RuntimeError) as theirs:
        getattr(torch.nn, name)(4, 5)(x)
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0") as ours:
        make(name)(x)
    assert str(ours.value) == str(theirs.value)


def test_lstm_proj_size_errors_as_torch_nn():
    for kwargs in (dict(proj_size=5), dict(proj_size=-1)):
        with pytest.raises(ValueError) as ours:
            tbptt_ext.LSTM(4, 5, **kwargs)
        with pytest.raises(ValueError) as theirs:
            torch.nn.LSTM(4, 5, **kwargs)
        assert str(ours.value) == str(theirs.value)
    m = tbptt_ext.LSTM(4, 5, proj_size=2)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 3, 2\), got \[1, 3, 5\]"):
        m(torch.randn(6, 3, 4), (torch.zeros(1, 3, 5), torch.zeros(1, 3, 5)))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[1\] size \(1, 3, 5\), got \[1, 3, 2\]"):
        m(torch.randn(6, 3, 4), (torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)))


def test_constructor_errors_as_torch_nn():
    with pytest.raises(ValueError, match="dropout should be a number in range"):
        tbptt_ext.GRU(4, 5, dropout=2.0)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        tbptt_ext.LSTM(4, 0)
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        tbptt_ext.RNN(4, 5, nonlinearity="sigmoid")


def test_packed_input_wrong_feature_size():
    packed = pack_padded_sequence(torch.randn(3, 2, 3), [3, 2])
    with pytest.raises(RuntimeError, match="must be equal to input_size"):
        make("LSTM")(packed)


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("sizes,rows", [([3, 0, 2], 5), ([1, 2], 3), ([], 0), ([2, 1], 4)])
def test_hand_built_packed_sequence_with_bad_batch_sizes(name, sizes, rows):
    packed = PackedSequence(torch.randn(rows, 4), torch.tensor(sizes, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch_sizes must be a non-empty 1-D tensor of positive, non-increasing"):
        make(name)(packed)
