"""Training across processes with torch.distributed: DistributedDataParallel over
tbptt_ext modules with tbptt_ext.TBPTT (2 processes, gloo, CPU) equals one process on
the whole batch; the main job under torchrun; bad launches fail clearly."""

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import tbptt_ext

B, T, I, H = 4, 24, 3, 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = tbptt_ext.LSTM(I, H, num_layers=2, dtype=torch.float64)
        self.head = nn.Linear(H, 2, dtype=torch.float64)

    def forward(self, x, state=None, reset=None):
        out, state = self.rnn(x, state, reset=reset)
        return self.head(out), state


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, dtype=torch.float64, generator=g)
    y = torch.randn(T, B, 2, dtype=torch.float64, generator=g)
    resets = torch.rand(T, B, generator=g) < 0.1
    return x, y, resets


def train(model, x, y, resets, k1, k2):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = tbptt_ext.TBPTT(model, optimizer, nn.functional.mse_loss, k1=k1, k2=k2, max_grad_norm=0.5)
    return trainer.run(x, y, resets=resets)


def worker(rank, world, port, k1, k2, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = Model()
    ddp = nn.parallel.DistributedDataParallel(model)
    x, y, resets = data()
    share = slice(rank * B // world, (rank + 1) * B // world)  # this process's streams
    train(ddp, x[:, share], y[:, share], resets[:, share], k1, k2)
    torch.save([p.detach() for p in model.parameters()], os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("k1,k2", [(6, 6), (4, 12)])
def test_ddp_on_two_processes_equals_one_process_on_the_whole_batch(tmp_path, k1, k2):
    mp.spawn(worker, args=(2, free_port(), k1, k2, str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    single = Model()
    train(single, *data(), k1, k2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for a, b, ref in zip(*ranks, single.parameters()):
        assert torch.equal(a, b)  # the final model is identical on every rank
        torch.testing.assert_close(a, ref.detach(), rtol=1e-10, atol=1e-12)


TINY = ["--max-chars", "40000", "--batch", "4", "--bptt", "16", "--embed", "8", "--hidden", "16",
        "--sample-chars", "0", "--device", "cpu"]


def run_command(args, env=None, timeout=240):
    env = dict(os.environ, **(env or {}))
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.skipif(shutil.which("torchrun") is None or shutil.which("tbptt-char-lm") is None,
                    reason="needs torchrun and the installed tbptt-char-lm command")
def test_main_job_under_torchrun():
    out = run_command(["torchrun", "--nproc_per_node=2", f"--master_port={free_port()}", "--no-python",
                       "tbptt-char-lm", *TINY])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("held-out bpc") == 1  # rank 0 alone prints results
    assert "over 2 processes" in out.stdout


@pytest.mark.skipif(shutil.which("torchrun") is None or shutil.which("tbptt-char-lm") is None,
                    reason="needs torchrun and the installed tbptt-char-lm command")
def test_rank_zero_alone_samples_past_the_dist_timeout():
    # the sample (here ~15 s) comes after the processes left the group: --dist-timeout
    # (8 s) bounds the collectives, not rank 0's work alone (the other rank's teardown
    # barrier timed out and torchrun killed the job, printing nothing)
    out = run_command(["torchrun", "--nproc_per_node=2", f"--master_port={free_port()}", "--no-python",
                       "tbptt-char-lm", *TINY[:-4], "--sample-chars", "40000", "--dist-timeout", "8", "--device", "cpu"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("held-out bpc") == 1 and "\nsample:\n" in out.stdout


FAILING_RANK = """
import sys
from tbptt_ext.examples import char_lm
loss, calls = char_lm.cross_entropy, []
def failing(*args):
    calls.append(1)
    if len(calls) == 20:  # mid-training: the other rank waits in DDP's gradient all-reduce
        raise RuntimeError("simulated failure on rank 0")
    return loss(*args)
if char_lm.os.environ["RANK"] == "0":
    char_lm.cross_entropy = failing
char_lm.main(sys.argv[1:])
"""


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="needs torchrun")
def test_an_error_on_one_rank_ends_the_job_without_waiting_for_the_timeout(tmp_path):
    # rank 0 fails mid-training while rank 1 waits in a collective: the job must end as soon
    # as torchrun sees the failure, not after --dist-timeout (rank 0 sat in a teardown
    # barrier that did not match the other rank's collective, then both printed timeout
    # tracebacks)
    import time

    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    started = time.perf_counter()
    out = run_command(["torchrun", "--nproc_per_node=2", f"--master_port={free_port()}", str(script),
                       *TINY, "--dist-timeout", "300"], timeout=280)
    assert out.returncode != 0 and "simulated failure on rank 0" in out.stderr
    assert time.perf_counter() - started < 150  # training takes seconds; the timeout would be 300 s
    assert "Timed out" not in out.stderr


def test_batch_not_divisible_by_world_size_is_a_clear_error():
    env = dict(WORLD_SIZE="3", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    out = run_command([sys.executable, "-m", "tbptt_ext.examples.char_lm", *TINY], env=env, timeout=60)
    assert out.returncode != 0
    assert "--batch 4 must be divisible by the number of processes (3)" in out.stderr
    env["RANK"] = "1"  # the other processes exit too, without repeating the message
    out = run_command([sys.executable, "-m", "tbptt_ext.examples.char_lm", *TINY], env=env, timeout=60)
    assert out.returncode != 0 and "must be divisible" not in out.stderr


def test_missing_rendezvous_is_a_clear_error_not_a_hang():
    env = dict(WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    out = run_command([sys.executable, "-m", "tbptt_ext.examples.char_lm", *TINY, "--dist-timeout", "3"],
                      env=env, timeout=120)
    assert out.returncode != 0
    assert "distributed rendezvous failed" in out.stderr and "expected 2 processes" in out.stderr
    out = run_command([sys.executable, "-m", "tbptt_ext.examples.char_lm", *TINY], env=dict(WORLD_SIZE="2"),
                      timeout=60)
    assert out.returncode != 0 and "start the processes with torchrun" in out.stderr
