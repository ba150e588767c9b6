#!/usr/bin/env python3
"""Golden values for cotext's losses, from PyTorch float64.

Run with a venv that has torch (and mpmath, which torch pulls in):
    python tests/golden/make_golden.py > tests/golden/losses.json

Every expected number is computed here from the *authors'* formulas, not from
cotext's: the complement entropy is the authors' `ComplementEntropy.forward`
(henry8527/COT), with its epsilons for the reference form and without them (in
float64, where p_j / (1 - p_g) is accurate at moderate margins) for the exact form;
GCE is the authors' `GuidedComplementEntropy.forward` (henry8527/GCE); HCOT is its
definition written with explicit probability ratios; cross-entropy is
`F.cross_entropy`. The margin-30 case, where float64 itself cannot form 1 - p_g,
takes its exact value from mpmath at 60 digits.

Logits for K >= 1000 are not stored: both sides compute them from the closed form in
`big_logits` (integer arithmetic, then one division and one multiply-add, identical
in IEEE float64 in Python and Rust). For those, gradients are stored at a sample of
columns plus the target column and the gradient's L2 norm.
"""
import json
import math

import mpmath
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
gen = torch.Generator().manual_seed(20261127)


def big_logits(n, k):
    i = torch.arange(n, dtype=torch.int64).unsqueeze(1)
    j = torch.arange(k, dtype=torch.int64).unsqueeze(0)
    return ((i * 131 + j * 7919) % 2003).to(torch.float64) / 2003.0 * 8.0 - 4.0


# --- the authors' code, generalised from its hard-coded K = 10 -----------------
def authors_complement(y_hat_logits, y, eps1=1e-7, eps2=1e-10):
    """henry8527/COT ComplementEntropy.forward, summed per row (no /N, no /K)."""
    batch, classes = y_hat_logits.shape
    y_hat = F.softmax(y_hat_logits, dim=1)
    yg = torch.gather(y_hat, 1, torch.unsqueeze(y, 1))
    yg_ = (1 - yg) + eps1
    px = y_hat / yg_.view(len(y_hat), 1)
    px_log = torch.log(px + eps2)
    y_zerohot = torch.ones(batch, classes).scatter_(1, y.view(batch, 1), 0)
    output = px * px_log * y_zerohot
    return output.sum(1), yg.squeeze(1)


def authors_gce_rows(logits, y, alpha, eps1=1e-7, eps2=1e-10, eps3=1e-7):
    """henry8527/GCE GuidedComplementEntropy.forward per row, before /log K and /N."""
    rows, yg = authors_complement(logits, y, eps1, eps2)
    guided = (yg + eps3) ** alpha
    return rows * guided


def hcot_rows(logits, y, coarse):
    """-(H_in + H_out) per row from explicit probability ratios."""
    p = F.softmax(logits, dim=1)
    coarse = torch.tensor(coarse)
    out = []
    for i in range(logits.shape[0]):
        g = int(y[i])
        grp = coarse == coarse[g]
        inn = grp.clone()
        inn[g] = False
        total = torch.zeros(())
        for mask in (inn, ~grp):
            if mask.sum() == 0:
                continue
            q = p[i][mask] / p[i][mask].sum()
            total = total + (q * torch.log(q)).sum()
        out.append(total)
    return torch.stack(out)


def divisor(norm, k):
    return {
        "none": 1.0,
        "classes": float(k),
        "classes-minus-one": float(k - 1),
        "log-classes": math.log(k),
        "log-classes-minus-one": math.log(k - 1) if k > 2 else 1.0,
    }[norm]


cases = []


def add(name, loss, logits, targets, value, grad, big=False, **extra):
    case = {"name": name, "loss": loss, "shape": list(logits.shape),
            "targets": targets.reshape(-1).tolist(), "value": value.item()}
    flat_grad = grad.reshape(-1, logits.shape[-1])
    if big:
        case["logits"] = "big"
        rows = flat_grad.shape[0]
        cols = sorted(set(list(range(0, logits.shape[-1], max(1, logits.shape[-1] // 97)))))
        samples = []
        for r in range(rows):
            t = int(targets.reshape(-1)[r])
            for c in sorted(set(cols + [t])):
                samples.append([r, c, flat_grad[r, c].item()])
        case["grad_samples"] = samples
        case["grad_norm"] = flat_grad.norm().item()
    else:
        case["logits"] = logits.reshape(-1).tolist()
        case["grad"] = flat_grad.reshape(-1).tolist()
    case.update(extra)
    cases.append(case)


def run(name, loss, logits, targets, fn, big=False, **extra):
    z = logits.clone().requires_grad_(True)
    value = fn(z)
    (grad,) = torch.autograd.grad(value, z)
    add(name, loss, logits, targets, value.detach(), grad, big=big, **extra)


def complement_value(z, y, form, norm, ignore=None):
    zz, yy = z.reshape(-1, z.shape[-1]), y.reshape(-1)
    if ignore is not None:
        keep = yy != ignore
        zz, yy = zz[keep], yy[keep]
    eps = (1e-7, 1e-10) if form == "reference" else (0.0, 0.0)
    rows, _ = authors_complement(zz, yy, *eps)
    return rows.sum() / len(yy) / divisor(norm, z.shape[-1])


for k in (2, 5, 10, 1000, 32000):
    big = k >= 1000
    n = 3 if big else 6
    logits = big_logits(n, k) if big else torch.randn(n, k, generator=gen) * 3
    targets = torch.randint(0, k, (n,), generator=gen)
    run(f"ce_k{k}", "cross_entropy", logits, targets,
        lambda z: F.cross_entropy(z, targets), big=big)
    run(f"ce_smooth_k{k}", "cross_entropy", logits, targets,
        lambda z: F.cross_entropy(z, targets, label_smoothing=0.1), big=big, label_smoothing=0.1)
    for form in ("exact", "reference"):
        run(f"complement_{form}_k{k}", "complement", logits, targets,
            lambda z: complement_value(z, targets, form, "classes"), big=big,
            form=form, normalization="classes")
    run(f"gce_reference_k{k}", "gce", logits, targets,
        lambda z: authors_gce_rows(z, targets, 1 / 3).sum() / len(targets) / math.log(k),
        big=big, form="reference", normalization="log-classes", alpha=1 / 3)
    run(f"gce_exact_k{k}", "gce", logits, targets,
        lambda z: authors_gce_rows(z, targets, 0.5, 0.0, 0.0, 0.0).sum() / len(targets)
        / divisor("log-classes-minus-one", k),
        big=big, form="exact", normalization="log-classes-minus-one", alpha=0.5)

# every normalization once, K = 10
logits = torch.randn(5, 10, generator=gen) * 2
targets = torch.randint(0, 10, (5,), generator=gen)
for norm in ("none", "classes", "classes-minus-one", "log-classes", "log-classes-minus-one"):
    run(f"complement_exact_norm_{norm}", "complement", logits, targets,
        lambda z: complement_value(z, targets, "exact", norm), form="exact", normalization=norm)

# rank 3 with padding (pad id 0 is never a real target here), i64 targets on the Rust side
B, T, V, PAD = 3, 5, 11, 0
logits = torch.randn(B, T, V, generator=gen) * 2
targets = torch.randint(1, V, (B, T), generator=gen)
targets[0, 3:] = PAD
targets[2, 1:] = PAD
run("ce_rank3_pad", "cross_entropy", logits, targets,
    lambda z: F.cross_entropy(z.reshape(-1, V), targets.reshape(-1), ignore_index=PAD),
    ignore_index=PAD)
run("ce_smooth_rank3_pad", "cross_entropy", logits, targets,
    lambda z: F.cross_entropy(z.reshape(-1, V), targets.reshape(-1), ignore_index=PAD,
                              label_smoothing=0.2),
    ignore_index=PAD, label_smoothing=0.2)
for form in ("exact", "reference"):
    run(f"complement_{form}_rank3_pad", "complement", logits, targets,
        lambda z: complement_value(z, targets, form, "classes", ignore=PAD),
        ignore_index=PAD, form=form, normalization="classes")

# HCOT: SST-5 hierarchy, and a K = 7 hierarchy with a singleton group
for name, k, coarse in (("hcot_sst5", 5, [0, 0, 1, 2, 2]),
                        ("hcot_k7", 7, [0, 1, 1, 1, 2, 2, 0])):
    logits = torch.randn(8, k, generator=gen) * 2
    targets = torch.randint(0, k, (8,), generator=gen)
    run(name, "hcot", logits, targets,
        lambda z: hcot_rows(z, targets, coarse).sum() / len(targets) / divisor("classes", k),
        coarse=coarse, form="exact", normalization="classes")

# Margin 30: the target logit 30 above the rest. The reference form collapses (its
# 1e-7 dwarfs 1 - p_g ~ 1e-13); the exact value is mpmath's.
k = 10
logits = torch.randn(4, k, generator=gen)
targets = torch.tensor([0, 3, 7, 9])
for i, t in enumerate(targets.tolist()):
    logits[i, t] = logits[i].max() + 30.0
run("complement_reference_margin30", "complement", logits, targets,
    lambda z: complement_value(z, targets, "reference", "classes"),
    form="reference", normalization="classes")
mpmath.mp.dps = 60
total = mpmath.mpf(0)
for i, t in enumerate(targets.tolist()):
    z = [mpmath.mpf(float(x)) for x in logits[i].tolist()]
    p = [mpmath.e ** x for x in z]
    s = sum(p)
    p = [x / s for x in p]
    comp = 1 - p[t]
    total += sum((p[j] / comp) * mpmath.log(p[j] / comp) for j in range(k) if j != t)
exact = float(total / len(targets) / k)
# the gradient of the exact form does not depend on z_g; compute it by torch on the
# target-masked softmax, which is what the definition reduces to
z = logits.clone().requires_grad_(True)
ent = torch.zeros(())
for i, t in enumerate(targets.tolist()):
    others = [j for j in range(k) if j != t]
    log_q = F.log_softmax(z[i, others], dim=0)
    ent = ent + (log_q.exp() * log_q).sum()
ent = ent / len(targets) / k
(grad,) = torch.autograd.grad(ent, z)
add("complement_exact_margin30", "complement", logits, targets, torch.tensor(exact), grad,
    form="exact", normalization="classes", mpmath_value=exact, torch_masked_value=ent.item())

print(json.dumps({"generator": "tests/golden/make_golden.py",
                  "torch": torch.__version__, "cases": cases}, indent=None))
