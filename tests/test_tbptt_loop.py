"""The seed's TBPTT loop gives the same losses and parameters with tbptt_ext as with torch.nn."""

import pytest
import torch

import tbptt_ext
from conftest import requires_fused_cpu


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def tbptt_train(rnn, head, x, y, k, lr=0.05):
    params = list(rnn.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    criterion = torch.nn.MSELoss()
    state, losses = None, []
    for start in range(0, x.shape[0], k):
        x_chunk, y_chunk = x[start : start + k], y[start : start + k]
        output, state = rnn(x_chunk, state)
        state = detach(state)
        loss = criterion(head(output), y_chunk)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, state


@requires_fused_cpu
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tbptt_loop_matches_torch_nn(name, dtype):
    torch.manual_seed(0)
    ours = getattr(tbptt_ext, name)(3, 8, num_layers=2, dtype=dtype)
    theirs = getattr(torch.nn, name)(3, 8, num_layers=2, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    head_a = torch.nn.Linear(8, 2, dtype=dtype)
    head_b = torch.nn.Linear(8, 2, dtype=dtype)
    head_b.load_state_dict(head_a.state_dict())
    t = torch.arange(600, dtype=dtype)
    x = torch.stack([torch.sin(t / 7), torch.cos(t / 11), torch.randn(600, dtype=dtype)], -1)
    x = x.unsqueeze(1).repeat(1, 4, 1) + 0.1 * torch.randn(600, 4, 3, dtype=dtype)
    y = torch.stack([torch.sin((t + 3) / 7), torch.cos((t + 5) / 11)], -1).unsqueeze(1).repeat(1, 4, 1)
    losses_a, state_a = tbptt_train(ours, head_a, x, y, k=25)
    losses_b, state_b = tbptt_train(theirs, head_b, x, y, k=25)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-4)
    torch.testing.assert_close(torch.tensor(losses_a), torch.tensor(losses_b), **tol)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, **tol)
    flat_a = state_a if isinstance(state_a, tuple) else (state_a,)
    flat_b = state_b if isinstance(state_b, tuple) else (state_b,)
    for a, b in zip(flat_a, flat_b):
        assert not a.requires_grad
        torch.testing.assert_close(a, b, **tol)
    quarter = len(losses_a) // 4
    assert sum(losses_a[-quarter:]) < sum(losses_a[:quarter])  # it learned something
