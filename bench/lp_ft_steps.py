"""The loss of every early fine-tune step, before the step, in eval mode and in train mode:
where an LP-FT fine-tune starts to move away from its probe.

    python bench/lp_ft_steps.py finetune DATA --strategy partial --epochs 1 [tlcli options]

Runs `tlcli` in this process with train.loop.forward_backward wrapped: steps 0-2 and every
third step print the batch's plain cross-entropy (no label smoothing) to stderr.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from tlcli.cli import app
from tlcli.train import loop

_forward_backward = loop.forward_backward


def logged_forward_backward(setup, x, targets, step):
    if step < 3 or step % 3 == 0:
        model = setup.model
        with torch.no_grad():
            modes = [module.training for module in model.modules()]
            model.eval()
            eval_loss = F.cross_entropy(model(x), targets).item()
            for module, mode in zip(model.modules(), modes, strict=True):
                module.train(mode)
            train_loss = F.cross_entropy(model(x), targets).item()
        print(
            f"step {step}: eval-mode loss {eval_loss:.4f}, train-mode loss {train_loss:.4f}",
            file=sys.stderr,
            flush=True,
        )
    return _forward_backward(setup, x, targets, step)


if __name__ == "__main__":
    loop.forward_backward = logged_forward_backward
    sys.argv = ["tlcli", *sys.argv[1:]]
    app()
