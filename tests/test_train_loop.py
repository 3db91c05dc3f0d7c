"""train/loop.run on two processes (torch.distributed, gloo on the CPU), as `accelerate launch`
runs every trainer on several GPUs; and what it does to glibc's allocator on a CPU."""

import ast
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from style_components.train import loop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    job = Path(__file__).with_name("ddp_loop_job.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(job), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={
        **__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def one_process_lrs(steps: int) -> list[float]:
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    schedule, lrs = loop.cosine_with_warmup(optimizer, steps), []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_each_process_follows_the_one_process_schedule(two_processes):
    """accelerate steps a prepared schedule once per process: on N GPUs the cosine ended after 1/N
    of the steps (here: learning rate 0 from step 6 of 10)."""
    want = one_process_lrs(10)
    for rank in two_processes:
        assert rank["schedule"] == pytest.approx(want)
    assert want[-1] > 0.02


def test_processes_stop_together_on_max_minutes(two_processes):
    """The main process decides; a process stopping alone leaves the others waiting in an all-reduce."""
    assert [rank["stopped_at"] for rank in two_processes] == [1, 1]


def test_the_encoders_global_batch_keeps_each_processs_gradient(two_processes):
    """Found in review: `train` on two processes gathered the embeddings with accelerate's gather,
    which is not differentiable: the loss had no grad_fn and the first step raised."""
    for rank, record in enumerate(two_processes):
        got = record["gathered"]
        assert got["shape"] == [6, 2, 4] and got["own_part_is_local"] and got["grad_norm"] > 0, rank


def test_the_cross_entropy_heads_directions_stay_one_across_processes(two_processes):
    """`train --loss ce` reads the theme directions in the loss, outside forward: their gradient
    must be averaged like the encoder's, or each process would end with its own head."""
    first, second = (rank["ce"] for rank in two_processes)
    assert first["moved"] > 1e-3
    for key in ("directions", "encoder"):
        assert torch.allclose(torch.tensor(first[key]), torch.tensor(second[key]), atol=1e-6), key


HEAP_CHECK = """
import ctypes, torch
from style_components.train import loop

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2 (malloc.h)
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mapped():  # was a fresh block of at least 64 MB mmapped (hblkhd: all arenas)?
    # Larger than all the heap's free chunks, or glibc serves it from one of them whatever the
    # settings: whether a block freed earlier was trimmed depends on frees Python happens to make.
    info = libc.mallinfo2()
    size = max(64 << 20, info.fordblks + (1 << 20))
    tensor = torch.empty(size, dtype=torch.uint8)
    return libc.mallinfo2().hblkhd - info.hblkhd >= size

seen = [mapped()]
with loop.freed_memory_kept() as kept:
    seen += [kept, mapped(), mapped()]
seen.append(mapped())
with loop.freed_memory_kept(active=False) as kept:   # a GPU run leaves the allocator alone
    seen += [kept, mapped()]
print(seen)
"""


@pytest.mark.skipif(loop._glibc() is None, reason="glibc's mallopt")
def test_cpu_training_takes_large_blocks_from_the_heap_and_gives_the_defaults_back():
    """Large activations were mmapped and unmapped every step (page faults: a third of a CPU
    step in the kernel); inside the loop's scope they come from the heap (and the freed block is
    reused), after it from mmap again. In a fresh process: a heap that earlier tests grew serves
    large blocks from its free chunks whatever the settings."""
    def check(setting: str) -> list:  # set either way: a tester's own environment must not decide
        out = subprocess.run([sys.executable, "-c", HEAP_CHECK], capture_output=True, text=True, check=True,
                             env={**os.environ, loop.KEEP_FREED_MEMORY: setting}).stdout
        return ast.literal_eval(out)

    before, kept, inside, reused, after, kept_off, off = check("1")
    assert before and kept and not inside and not reused and after
    assert not kept_off and off
    # the opt-out for a machine short of memory: mmap throughout
    before, kept, inside, reused, after, kept_off, off = check("0")
    assert not kept and before and inside and reused and after
