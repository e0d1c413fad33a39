"""Does the visual module still know the objects' colour? A linear probe per backbone stage.

For every toy sentence, the backbone features of each stage are averaged over the target's mask
(area-weighted on that stage's grid); a linear classifier is fit on 70 % of the objects to name
the object's colour (6 classes, chance 0.17) and scored on the other 30 %. The DMN meets the
language only at the last stage, so a colour the last stage has lost is a colour word the model
cannot learn.

    .venv/bin/python pipelines/probe_colour.py --shards shards/toy                 # fresh init
    .venv/bin/python pipelines/probe_colour.py --shards shards/toy --checkpoint runs/toy/checkpoints/best.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmn_data.stream import make_loader  # noqa: E402
from dmn_data.toy import COLOURS  # noqa: E402
from dmn_model import DMN, preset  # noqa: E402
from dmn_model import checkpoint as ck  # noqa: E402
from dmn_model.checkpoint import model_from_checkpoint  # noqa: E402


def pooled_features(model: DMN, shards: str, split: str, size: int, batches: int
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per stage ``(N, C_i)`` mask-pooled features, and ``(N,)`` colour labels."""
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
    loader = make_loader(shards, split, size=size, batch_size=64, train=False, workers=0)
    per_stage: list[list[torch.Tensor]] = []
    labels = []
    with torch.no_grad():
        for k, batch in enumerate(loader):
            if k >= batches:
                break
            feats = model.backbone(model.normalize(batch["image"]))
            per_stage = per_stage or [[] for _ in feats]
            for i in range(batch["image"].shape[0]):
                mask = batch["mask"][i].float()[None, None]
                if mask.sum() < 1:
                    continue
                rgb = (batch["image"][i].float() * mask[0]).sum((1, 2)) / mask.sum()
                labels.append(int((palette - rgb).abs().sum(1).argmin()))
                for s, f in enumerate(feats):
                    weight = F.adaptive_avg_pool2d(mask, f.shape[-2:])[0]
                    per_stage[s].append((f[i] * weight).sum((1, 2)) / weight.sum().clamp_min(1e-6))
    return [torch.stack(x) for x in per_stage], torch.tensor(labels)


def probe(x: torch.Tensor, y: torch.Tensor, train_fraction: float = 0.7) -> float:
    """Held-out accuracy of a linear classifier on standardised features."""
    cut = int(len(y) * train_fraction)
    x = (x - x[:cut].mean(0)) / (x[:cut].std(0) + 1e-6)
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(lin(x[:cut]), y[:cut]).backward()
        opt.step()
    with torch.no_grad():
        return float((lin(x[cut:]).argmax(1) == y[cut:]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="shards/toy", help="toy shards (default: shards/toy)")
    parser.add_argument("--checkpoint", help="a dmn-train checkpoint; default: a fresh tiny DMN")
    parser.add_argument("--split", default="train")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batches", type=int, default=31, help="batches of 64 sentences")
    args = parser.parse_args()
    if args.checkpoint:
        model = model_from_checkpoint(ck.load_checkpoint(args.checkpoint, map_location="cpu"),
                                      args.checkpoint).eval()
        what = args.checkpoint
    else:
        torch.manual_seed(0)
        # Train mode: at initialisation only batch statistics normalise the features.
        model = DMN(preset("tiny"), vocab_size=2).train()
        what = "fresh tiny DMN (seed 0)"
    feats, labels = pooled_features(model, args.shards, args.split, args.size, args.batches)
    print(f"colour probe, {what}: {len(labels)} objects, chance {1 / len(COLOURS):.2f}")
    strides = model.backbone.feature_info.reduction()
    for s, x in enumerate(feats):
        print(f"  stage {s + 1} (stride {strides[s]:>2}, {x.shape[1]:>3} ch): "
              f"held-out accuracy {probe(x, labels):.3f}")


if __name__ == "__main__":
    main()
