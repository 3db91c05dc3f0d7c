"""`train --loss ce`: the cosine-softmax cross-entropy against a direct computation, and a run
through the real CLI that exports the encoder alone (the theme head is training-only)."""

import json
import math

import pytest
import torch
from safetensors import safe_open

from icon_fixture import tiny_encoder_args
from style_components import cli
from style_components.extract import Extractor
from style_components.train import dataset
from style_components.train.classify import WithThemeHead, cosine_ce_loss

TINY = tiny_encoder_args()


def direct_cosine_ce(features, directions, labels, temperature):
    total, count = 0.0, 0
    for i in range(features.shape[0]):
        for j in range(features.shape[1]):
            z = features[i, j] / features[i, j].norm()
            logits = [float(z @ (w / w.norm())) / temperature for w in directions]
            total += -(logits[int(labels[i])] - math.log(sum(math.exp(x) for x in logits)))
            count += 1
    return total / count


@pytest.mark.parametrize("n,v,d,classes,t", [(6, 2, 5, 3, 0.1), (5, 3, 4, 2, 0.5), (3, 1, 8, 7, 1.0)])
def test_matches_direct_computation(n, v, d, classes, t):
    g = torch.Generator().manual_seed(n * 10 + classes)
    features = torch.randn(n, v, d, generator=g, dtype=torch.float64) * 3
    directions = torch.randn(classes, d, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, classes, (n,), generator=g)
    got = cosine_ce_loss(features, directions, labels, t)
    assert float(got) == pytest.approx(direct_cosine_ce(features, directions, labels, t), rel=1e-5)


def test_loss_reads_only_directions_not_lengths_and_trains_both():
    labels = torch.tensor([0, 1])
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    right = torch.tensor([[[2.0, 0.1]], [[0.1, 5.0]]])
    assert cosine_ce_loss(right, directions, labels) < cosine_ce_loss(right.flip(0), directions, labels)
    assert torch.allclose(cosine_ce_loss(right * 7, directions * 3, labels), cosine_ce_loss(right, directions, labels))
    model = WithThemeHead(torch.nn.Linear(4, 3), themes=5, dim=3)
    x = torch.randn(6, 4)
    assert torch.equal(model(x), model.encoder(x))          # forward is the encoder's embedding
    cosine_ce_loss(model(x).view(3, 2, 3), model.directions, torch.tensor([0, 4, 2])).backward()
    assert model.directions.grad.abs().sum() > 0 and model.encoder.weight.grad.abs().sum() > 0


def test_train_with_ce_resumes_and_exports_the_encoder_alone(data_dir, tmp_path):
    run = tmp_path / "ce"
    args = ["train", str(data_dir), str(run), "--steps", "2", "--eval-every", "1", "--save-every", "1",
            "--loss", "ce", *TINY]
    assert cli.main(args + ["--max-minutes", "1e-9"]) == 0             # stops after step 1
    assert cli.main(args) == 0                                         # resumes with the head
    history = json.loads((run / "history.json").read_text())
    assert history["step"] == [1, 2] and history["eval_step"] == [1, 2]
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    themes = len(dataset.load(data_dir).themes)
    assert state["settings"]["loss"] == "ce" and state["model"]["directions"].shape == (themes, 16)
    with safe_open(str(run / "extractor.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "directions" in k or k.startswith("encoder.")]
    ex = Extractor.load(run / "extractor.safetensors")
    assert torch.allclose(ex.model.state_dict()["head.weight"], state["model"]["encoder.head.weight"].float(), atol=1e-2)
    # a SupCon run cannot resume a cross-entropy checkpoint: the loss is a setting
    assert cli.main(["train", str(data_dir), str(run), "--steps", "3", *TINY]) == 2
