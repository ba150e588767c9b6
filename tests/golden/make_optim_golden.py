#!/usr/bin/env python3
"""Golden parameter trajectories for cotext's optimizers, from torch.optim (float64).

    python tests/golden/make_optim_golden.py > tests/golden/optim.json
"""
import json

import torch

torch.set_default_dtype(torch.float64)
gen = torch.Generator().manual_seed(7)
p0 = torch.randn(3, 4, generator=gen)
grads = [torch.randn(3, 4, generator=gen) for _ in range(4)]

configs = {
    "adamw": lambda p: torch.optim.AdamW([p], lr=0.01, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.1),
    "sgd_momentum": lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9),
    "sgd_nesterov_wd": lambda p: torch.optim.SGD([p], lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
    "sgd_plain": lambda p: torch.optim.SGD([p], lr=0.1),
}
out = {"p0": p0.reshape(-1).tolist(), "grads": [g.reshape(-1).tolist() for g in grads], "runs": {}}
for name, make in configs.items():
    p = p0.clone().requires_grad_(True)
    opt = make(p)
    traj = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        traj.append(p.detach().reshape(-1).tolist())
    out["runs"][name] = traj

# clip_grad_norm_ over two parameters
a = torch.zeros(3, 4, requires_grad=True)
b = torch.zeros(5, requires_grad=True)
a.grad = grads[0].clone() * 3
b.grad = torch.arange(5.0)
norm = torch.nn.utils.clip_grad_norm_([a, b], max_norm=2.0)
out["clip"] = {"max_norm": 2.0, "norm": norm.item(), "a": a.grad.reshape(-1).tolist(), "b": b.grad.tolist()}
print(json.dumps(out))
