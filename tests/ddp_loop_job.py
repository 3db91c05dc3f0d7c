"""Run by tests/test_train_loop.py under `torch.distributed.run --nproc_per_node 2` (gloo, CPU):
train/loop.run as every trainer calls it, recording each step's learning rate, then a run whose
processes disagree on --max-minutes (as clocks can). Writes OUT/rank<N>.json."""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from style_components.train import loop

out = Path(sys.argv[1])
accelerator = Accelerator(cpu=True)
rank = accelerator.process_index
record = {}


def train(name, steps, max_minutes):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    lrs = record.setdefault(name, [])

    def loss_fn(step, model):
        lrs.append(optimizer.param_groups[0]["lr"])
        return model(torch.ones(4, 2)).pow(2).mean()
    return loop.run(accelerator, out / name / f"rank{rank}", model, optimizer, loss_fn, steps=steps, settings={},
                    title=name, progress=False, max_minutes=max_minutes)["step"]


train("schedule", 10, 0)
# the encoder trainer's global batch: the gathered embeddings must still carry this process's gradient
from style_components.train.fit import gather_keeping_grad  # noqa: E402
from style_components.train.supcon import supcon_loss  # noqa: E402
local = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(rank), requires_grad=True)
whole = gather_keeping_grad(accelerator, local)
supcon_loss(whole, accelerator.gather(torch.tensor([0, 1, rank]))).backward()
record["gathered"] = {"shape": list(whole.shape), "own_part_is_local": bool(torch.equal(whole[3 * rank:3 * rank + 3], local)),
                      "grad_norm": float(local.grad.norm())}
# `train --loss ce`: the theme directions live beside the encoder, read by the loss, not by forward;
# their gradients must still be averaged, or each process would learn its own
from style_components.train.classify import WithThemeHead, cosine_ce_loss  # noqa: E402
torch.manual_seed(0)
ce_model = WithThemeHead(torch.nn.Linear(4, 3), themes=2, dim=3)
ce_start = ce_model.directions.detach().clone()
ce_optimizer = torch.optim.SGD(ce_model.parameters(), lr=0.5)


def ce_loss(step, model):
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(100 * rank + step))   # each process its own batch
    return cosine_ce_loss(model(x).view(2, 2, 3), accelerator.unwrap_model(model).directions, torch.tensor([0, 1]))


loop.run(accelerator, out / "ce" / f"rank{rank}", ce_model, ce_optimizer, ce_loss, steps=3, settings={},
         title="ce", progress=False)
record["ce"] = {"directions": ce_model.directions.tolist(), "encoder": ce_model.encoder.weight.tolist(),
                "moved": float((ce_model.directions.detach() - ce_start).abs().max())}
# rank 0's clock says the time is up after the first step, rank 1's never does
record["stopped_at"] = train("stop", 10, 1e-9 if rank == 0 else 1e6)
(out / f"rank{rank}.json").write_text(json.dumps(record))
# leave together, the process group closed: a process exiting while gloo's threads still run
# can abort ("terminate called without an active exception"), seen once on a loaded machine
accelerator.wait_for_everyone()
torch.distributed.destroy_process_group()
