#!/usr/bin/env python3
"""PyTorch eager reference for `benches/train_step.rs`: the same five models, the
same shipped configs, the same synthetic batch, the same update (AdamW lr 1e-4;
CE, or COT = a CE update with optimizer A, then a second forward pass and a
complement-entropy update with optimizer B), one JSON line per case.

    /work/venvs/torch/bin/python benches/torch_ref.py --workload bilstm-sst5 --objective cot --steps 20 --warmup 3

On a GPU: `--device cuda --precision bf16` (torch.autocast around the forward
passes and losses, as PyTorch users write mixed precision; f32 weights and
optimizer), `--random-init` (MiniLM's shapes with random weights: only its
config.json is read), and `--workload loss --rows N --vocab V` (one token-level
loss forward + backward on random logits). The line then also reports
torch.cuda.max_memory_allocated / max_memory_reserved.

Needs only torch (no transformers, no safetensors package): the BERT encoder is
written here with HF's module names and loads all-MiniLM-L6-v2's model.safetensors
with a small reader. Threads: CANDLE_NUM_THREADS, else RAYON_NUM_THREADS, else 2
(`torch.set_num_threads`).

Model choices are what a PyTorch user would write: nn.LSTM over packed sequences,
nn.LSTMCell for the attentional decoder (input feeding rules out a whole-sequence
LSTM), F.scaled_dot_product_attention for attention, F.cross_entropy, and
torch.optim.AdamW (its default implementation: foreach).
"""

import argparse
import json
import math
import os
import struct
import sys
import time
import tomllib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ROOT = Path(__file__).resolve().parent.parent
DATA_SEED = 20261127  # train_step.rs DATA_SEED
PAD, BOS, EOS = 0, 1, 2
LR = 1e-4
M64 = (1 << 64) - 1

# name: (config, shape) exactly as train_step.rs WORKLOADS.
WORKLOADS = {
    "bilstm-sst5": ("configs/sst5-bilstm.toml", ("classify", 16000, 5, 32, 40)),
    "transformer-sst5": ("configs/imdb-rating-transformer.toml", ("classify", 16000, 5, 32, 40)),
    "minilm-sst2": ("configs/sst2-minilm.toml", ("classify", 30522, 2, 32, 40)),
    "lstm-multi30k": ("configs/multi30k-de-en-lstm.toml", ("translate", 8000, 64, 30, 30)),
    "transformer-multi30k": ("configs/multi30k-de-en-transformer.toml", ("translate", 8000, 64, 30, 30)),
}


# ---------------------------------------------------------------- synthetic batch

class SplitMix64:
    """cotext::rng::SplitMix64 (Vigna's splitmix64.c)."""

    def __init__(self, seed):
        self.state = seed & M64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        return self.next_u64() % n

    def length(self, row, mx):
        return mx if row == 0 else mx // 2 + self.below(mx - mx // 2 + 1)


def synthetic_batch(shape):
    """The batch of train_step.rs `Batch::synthetic`, drawn in the same order."""
    rng = SplitMix64(DATA_SEED)
    if shape[0] == "classify":
        _, vocab, classes, batch, length = shape
        ids = torch.zeros(batch, length, dtype=torch.long)
        labels, tokens = [], 0
        for r in range(batch):
            n = rng.length(r, length)
            for t in range(n):
                ids[r, t] = 1 + rng.below(vocab - 1)
            labels.append(rng.below(classes))
            tokens += n
        return {"ids": ids, "mask": ids != PAD, "labels": torch.tensor(labels), "tokens": tokens}
    _, vocab, batch, src_len, tgt_len = shape
    src = torch.zeros(batch, src_len, dtype=torch.long)
    tgt_in = torch.zeros(batch, tgt_len, dtype=torch.long)
    tgt_out = torch.zeros(batch, tgt_len, dtype=torch.long)
    tokens = 0
    for r in range(batch):
        ls = rng.length(r, src_len)
        for t in range(ls):
            src[r, t] = 3 + rng.below(vocab - 3)
        lt = rng.length(r, tgt_len)
        tgt_in[r, 0] = BOS
        for t in range(lt - 1):
            y = 3 + rng.below(vocab - 3)
            tgt_out[r, t] = y
            tgt_in[r, t + 1] = y
        tgt_out[r, lt - 1] = EOS
        tokens += ls + lt
    return {"src": src, "mask": src != PAD, "tgt_in": tgt_in, "tgt_out": tgt_out, "tokens": tokens}


# ---------------------------------------------------------------- layers

def sinusoidal_positions(length, dim):
    """cotext layers::sinusoidal_positions: sin on even, cos on odd features."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    i = torch.arange(dim)
    freq = torch.pow(10000.0, -((i // 2) * 2).double() / dim)
    a = pos * freq
    return torch.where(i % 2 == 0, a.sin(), a.cos()).float()


class Attention(nn.Module):
    """Multi-head attention with separate q, k, v, output projections (biases)."""

    def __init__(self, d, heads, dropout):
        super().__init__()
        self.query, self.key, self.value, self.output = (nn.Linear(d, d) for _ in range(4))
        self.heads, self.p = heads, dropout

    def split(self, x):
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, memory=None, mask=None, causal=False):
        kv = x if memory is None else memory
        q, k, v = self.split(self.query(x)), self.split(self.key(kv)), self.split(self.value(kv))
        ctx = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0, is_causal=causal
        )
        b, _, t, _ = ctx.shape
        return self.output(ctx.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, d, ffn, act):
        super().__init__()
        self.up, self.down = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.act = {"gelu": F.gelu, "relu": F.relu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}[act]

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def masked_mean(h, mask):
    m = mask.unsqueeze(2).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def key_mask(mask):
    """Boolean SDPA mask [B, 1, 1, S]: True where a key may be attended to."""
    return mask[:, None, None, :]


# ---------------------------------------------------------------- models

class BiLstmClassifier(nn.Module):
    def __init__(self, c, vocab, classes):
        super().__init__()
        e, h, layers, p = c.get("embed_dim", 300), c.get("hidden", 256), c.get("layers", 1), c.get("dropout", 0.5)
        self.pooling = c.get("pooling", "max")
        self.embedding = nn.Embedding(vocab, e)
        self.lstm = nn.LSTM(e, h, num_layers=layers, bidirectional=True, batch_first=True,
                            dropout=p if layers > 1 else 0.0)
        self.drop = nn.Dropout(p)
        self.classifier = nn.Linear(2 * h, classes)

    def forward(self, b):
        ids, mask = b["ids"], b["mask"]
        x = self.drop(self.embedding(ids))
        packed = pack_padded_sequence(x, mask.sum(1).cpu(), batch_first=True, enforce_sorted=False)
        out, (hn, _) = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        if self.pooling == "max":
            pooled = out.masked_fill(~mask.unsqueeze(2), torch.finfo(out.dtype).min).max(1).values
        elif self.pooling == "mean":
            pooled = masked_mean(out, mask)
        else:
            pooled = torch.cat([hn[-2], hn[-1]], 1)
        return self.classifier(self.drop(pooled))


class PreNormLayer(nn.Module):
    def __init__(self, d, heads, ffn, act, attn_dropout, eps):
        super().__init__()
        self.attention = Attention(d, heads, attn_dropout)
        self.attention_norm = nn.LayerNorm(d, eps=eps)
        self.ffn = FeedForward(d, ffn, act)
        self.ffn_norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x, mask, drop):
        x = x + drop(self.attention(self.attention_norm(x), mask=mask))
        return x + drop(self.ffn(self.ffn_norm(x)))


class TransformerClassifier(nn.Module):
    def __init__(self, c, vocab, classes):
        super().__init__()
        d = c.get("d_model", 256)
        assert c.get("norm", "pre") == "pre" and c.get("positions", "sinusoidal") == "sinusoidal"
        assert c.get("pooling", "mean") == "mean"
        eps = c.get("layer_norm_eps", 1e-5)
        self.d = d
        self.embedding = nn.Embedding(vocab, d)
        nn.init.normal_(self.embedding.weight, std=d ** -0.5)
        self.register_buffer("positions", sinusoidal_positions(c.get("max_len", 512), d))
        self.layers = nn.ModuleList(
            PreNormLayer(d, c.get("heads", 4), c.get("ffn_dim", 1024), c.get("activation", "gelu"),
                         c.get("attention_dropout", 0.1), eps)
            for _ in range(c.get("layers", 4)))
        self.final_norm = nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(c.get("dropout", 0.1))
        self.classifier = nn.Linear(d, classes)

    def forward(self, b):
        ids, mask = b["ids"], b["mask"]
        x = self.drop(self.embedding(ids) * math.sqrt(self.d) + self.positions[: ids.shape[1]])
        km = key_mask(mask)
        for layer in self.layers:
            x = layer(x, km, self.drop)
        pooled = masked_mean(self.final_norm(x), mask)
        return self.classifier(self.drop(pooled))


def load_safetensors(path):
    """A safetensors file as {name: tensor} (8-byte header length, JSON header, data)."""
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


class _Module(nn.Module):
    """An empty container, for HF's nesting of module names."""


class BertLayer(nn.Module):
    def __init__(self, d, heads, ffn, eps, attn_p):
        super().__init__()
        self.attention = _Module()
        self.attention.self = _Module()
        for n in ("query", "key", "value"):
            setattr(self.attention.self, n, nn.Linear(d, d))
        self.attention.output = _Module()
        self.attention.output.dense = nn.Linear(d, d)
        self.attention.output.LayerNorm = nn.LayerNorm(d, eps=eps)
        self.intermediate = _Module()
        self.intermediate.dense = nn.Linear(d, ffn)
        self.output = _Module()
        self.output.dense = nn.Linear(ffn, d)
        self.output.LayerNorm = nn.LayerNorm(d, eps=eps)
        self.heads, self.attn_p = heads, attn_p

    def forward(self, x, mask, drop):
        s = self.attention.self
        b, t, d = x.shape

        def split(y):
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        # HF BertSdpaSelfAttention: SDPA with attention-probability dropout.
        ctx = F.scaled_dot_product_attention(split(s.query(x)), split(s.key(x)), split(s.value(x)), attn_mask=mask,
                                             dropout_p=self.attn_p if self.training else 0.0)
        a = self.attention.output.dense(ctx.transpose(1, 2).reshape(b, t, d))
        x = self.attention.output.LayerNorm(drop(a) + x)
        f = self.output.dense(F.gelu(self.intermediate.dense(x)))
        return self.output.LayerNorm(drop(f) + x)


class BertClassifier(nn.Module):
    """HF BertModel (post-norm, absolute positions, token type 0, no pooler) loaded
    from model.safetensors, mean pooling, dropout, a new linear head."""

    def __init__(self, c, vocab, classes, path, random_init=False):
        super().__init__()
        hf = json.loads((Path(path) / "config.json").read_text())
        assert hf.get("hidden_act", "gelu") == "gelu" and c.get("pooling", "mean") == "mean"
        d, eps = hf["hidden_size"], hf.get("layer_norm_eps", 1e-12)
        self.embeddings = _Module()
        self.embeddings.word_embeddings = nn.Embedding(hf["vocab_size"], d)
        self.embeddings.position_embeddings = nn.Embedding(hf["max_position_embeddings"], d)
        self.embeddings.token_type_embeddings = nn.Embedding(hf.get("type_vocab_size", 2), d)
        self.embeddings.LayerNorm = nn.LayerNorm(d, eps=eps)
        self.encoder = _Module()
        self.encoder.layer = nn.ModuleList(
            BertLayer(d, hf["num_attention_heads"], hf["intermediate_size"], eps,
                      c.get("attention_dropout", hf.get("attention_probs_dropout_prob", 0.1)))
            for _ in range(hf["num_hidden_layers"]))
        self.drop = nn.Dropout(c.get("hidden_dropout", hf.get("hidden_dropout_prob", 0.1)))
        self.classifier_drop = nn.Dropout(c.get("classifier_dropout", 0.1))
        self.classifier = nn.Linear(d, classes)
        nn.init.normal_(self.classifier.weight, std=hf.get("initializer_range", 0.02))
        nn.init.zeros_(self.classifier.bias)
        if random_init:
            return
        tensors = {}
        for name, t in load_safetensors(Path(path) / "model.safetensors").items():
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            name = name.removeprefix("bert.")
            if name.startswith(("embeddings.", "encoder.")) and name != "embeddings.position_ids":
                tensors[name] = t
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        missing = [m for m in missing if not m.startswith("classifier.")]
        if missing or unexpected:
            raise SystemExit(f"{path}: missing {missing}, unexpected {unexpected}")

    def forward(self, b):
        ids, mask = b["ids"], b["mask"]
        e = self.embeddings
        t = ids.shape[1]
        x = e.word_embeddings(ids) + e.position_embeddings.weight[:t] + e.token_type_embeddings.weight[0]
        x = self.drop(e.LayerNorm(x))
        km = key_mask(mask)
        for layer in self.encoder.layer:
            x = layer(x, km, self.drop)
        return self.classifier(self.classifier_drop(masked_mean(x, mask)))


class LstmSeq2Seq(nn.Module):
    """cotext's lstm_attention: bidirectional encoder (hidden/2 per direction),
    decoder LSTM with input feeding, Luong attention, h~ = tanh(W_c [c; h])."""

    def __init__(self, c, vocab):
        super().__init__()
        e, h, layers, p = c.get("embed_dim", 256), c.get("hidden", 256), c.get("layers", 2), c.get("dropout", 0.2)
        self.h = h
        self.src_embedding = nn.Embedding(vocab, e)
        self.tgt_embedding = nn.Embedding(vocab, e)
        self.encoder = nn.LSTM(e, h // 2, num_layers=layers, bidirectional=True, batch_first=True,
                               dropout=p if layers > 1 else 0.0)
        self.cells = nn.ModuleList(nn.LSTMCell(e + h if i == 0 else h, h) for i in range(layers))
        self.attention = nn.Linear(h, h, bias=False) if c.get("attention", "general") == "general" else None
        self.combine = nn.Linear(2 * h, h, bias=False)
        self.tie = c.get("tie_embeddings", False)
        if not self.tie:
            self.out_w = nn.Parameter(torch.empty(vocab, h))
        self.out_b = nn.Parameter(torch.zeros(vocab))
        self.drop = nn.Dropout(p)
        # TF-NMT's U(-0.1, 0.1) for every weight.
        for name, prm in self.named_parameters():
            if name != "out_b":
                nn.init.uniform_(prm, -0.1, 0.1)

    def forward(self, b):
        src, mask, tgt_in = b["src"], b["mask"], b["tgt_in"]
        s = src.shape[1]
        x = self.drop(self.src_embedding(src))
        packed = pack_padded_sequence(x, mask.sum(1).cpu(), batch_first=True, enforce_sorted=False)
        out, (hn, _) = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=s)  # zero at padding
        last = torch.cat([hn[-2], hn[-1]], 1)
        keys = self.attention(memory) if self.attention is not None else memory / math.sqrt(self.h)
        keys_t = keys.transpose(1, 2)
        bias = (~mask).unsqueeze(1).to(memory.dtype) * torch.finfo(memory.dtype).min  # [B, 1, S]
        emb = self.drop(self.tgt_embedding(tgt_in))
        hs = [last] * len(self.cells)
        cs = [torch.zeros_like(last)] * len(self.cells)
        feed = torch.zeros_like(last)
        tildes = []
        for t in range(tgt_in.shape[1]):
            x = torch.cat([emb[:, t], feed], 1)
            for i, cell in enumerate(self.cells):
                if i > 0:
                    x = self.drop(x)
                hs[i], cs[i] = cell(x, (hs[i], cs[i]))
                x = hs[i]
            probs = torch.softmax(torch.bmm(x.unsqueeze(1), keys_t) + bias, -1)
            ctx = torch.bmm(probs, memory).squeeze(1)
            feed = torch.tanh(self.combine(torch.cat([ctx, x], 1)))
            tildes.append(feed)
        hid = self.drop(torch.stack(tildes, 1))
        w = self.tgt_embedding.weight if self.tie else self.out_w
        return F.linear(hid, w, self.out_b)


class DecoderLayer(nn.Module):
    def __init__(self, d, heads, ffn, act, eps):
        super().__init__()
        self.self_attention = Attention(d, heads, 0.0)
        self.self_attention_norm = nn.LayerNorm(d, eps=eps)
        self.cross_attention = Attention(d, heads, 0.0)
        self.cross_attention_norm = nn.LayerNorm(d, eps=eps)
        self.ffn = FeedForward(d, ffn, act)
        self.ffn_norm = nn.LayerNorm(d, eps=eps)

    def forward(self, y, memory, src_mask, drop):
        y = y + drop(self.self_attention(self.self_attention_norm(y), causal=True))
        y = y + drop(self.cross_attention(self.cross_attention_norm(y), memory=memory, mask=src_mask))
        return y + drop(self.ffn(self.ffn_norm(y)))


class TransformerSeq2Seq(nn.Module):
    """cotext's transformer_seq2seq: pre-norm, sinusoidal positions, no attention
    dropout, tied embeddings, no output bias."""

    def __init__(self, c, vocab):
        super().__init__()
        d = c.get("d_model", 256)
        assert c.get("tie_embeddings", True), "only tied embeddings are replicated"
        heads, ffn, act, eps = c.get("heads", 4), c.get("ffn_dim", 1024), c.get("activation", "relu"), c.get(
            "layer_norm_eps", 1e-5)
        self.d = d
        self.embedding = nn.Embedding(vocab, d)
        nn.init.normal_(self.embedding.weight, std=d ** -0.5)
        self.register_buffer("positions", sinusoidal_positions(c.get("max_len", 256), d))
        self.encoder = nn.ModuleList(PreNormLayer(d, heads, ffn, act, 0.0, eps) for _ in range(c.get("encoder_layers", 3)))
        self.encoder_norm = nn.LayerNorm(d, eps=eps)
        self.decoder = nn.ModuleList(DecoderLayer(d, heads, ffn, act, eps) for _ in range(c.get("decoder_layers", 3)))
        self.decoder_norm = nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(c.get("dropout", 0.1))

    def embed(self, ids):
        return self.drop(self.embedding(ids) * math.sqrt(self.d) + self.positions[: ids.shape[1]])

    def forward(self, b):
        km = key_mask(b["mask"])
        x = self.embed(b["src"])
        for layer in self.encoder:
            x = layer(x, km, self.drop)
        memory = self.encoder_norm(x)
        y = self.embed(b["tgt_in"])
        for layer in self.decoder:
            y = layer(y, memory, km, self.drop)
        return F.linear(self.decoder_norm(y), self.embedding.weight)


# ---------------------------------------------------------------- losses and update

def complement_entropy(logits, targets, ignore):
    """COT's complement entropy, exact form (masked log-softmax, no epsilon),
    normalised by K and averaged over counted rows: -(1/N) sum_i H_c,i / K."""
    k = logits.shape[-1]
    z, g = logits.reshape(-1, k), targets.reshape(-1)
    if ignore is not None:
        keep = g != ignore
        z, g = z[keep], g[keep]
    if g.numel() == 0:
        return logits.sum() * 0.0
    target = F.one_hot(g, k).bool()
    logq = F.log_softmax(z.masked_fill(target, float("-inf")), 1)
    # 0 at the target (q = 0 there) instead of 0 * -inf, with finite gradients.
    ent = -(logq.exp() * logq.masked_fill(target, 0.0)).sum(1)
    return -(ent / k).mean()


def cross_entropy(logits, targets, ignore, smoothing):
    k = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, k), targets.reshape(-1),
                           ignore_index=ignore if ignore is not None else -100, label_smoothing=smoothing)


def peak_rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def threads():
    for var in ("CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"):
        v = os.environ.get(var, "")
        if v.isdigit() and int(v) > 0:
            return int(v)
    return 2


def minilm_dir():
    if os.environ.get("COTEXT_MINILM"):
        return Path(os.environ["COTEXT_MINILM"])
    cache = Path(os.environ.get("COTEXT_CACHE", Path.home() / ".cache/cotext"))
    return cache / "all-minilm-l6-v2"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted([*WORKLOADS, "loss"]))
    ap.add_argument("--objective", choices=["ce", "cot"], default="ce")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["f32", "bf16", "f16"], default="f32")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dropout", type=float, help="overrides the config's model.dropout (train_step's --set model.dropout=P)")
    args = ap.parse_args()
    if args.list:
        print("\n".join([*WORKLOADS, "loss"]))
        return
    if not args.workload or args.steps <= 0:
        ap.error("--workload and a positive --steps are required")
    torch.set_num_threads(threads())
    device = torch.device(args.device)
    amp_dtype = {"f32": None, "bf16": torch.bfloat16, "f16": torch.float16}[args.precision]

    def autocast():
        return torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def gpu_memory():
        if device.type != "cuda":
            return {}
        return {"max_memory_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                "max_memory_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20,
                "gpu": torch.cuda.get_device_name(device)}

    if args.workload == "loss":
        loss_bench(args, device, amp_dtype, sync, gpu_memory)
        return
    config_path, shape = WORKLOADS[args.workload]
    config = tomllib.loads((ROOT / config_path).read_text())
    mc, tc = config["model"], config.get("train", {})
    if args.dropout is not None:
        mc["dropout"] = args.dropout
    seed = tc.get("seed", 0)
    torch.manual_seed(seed)
    kind = mc["kind"]
    if kind == "bilstm":
        model = BiLstmClassifier(mc, shape[1], shape[2])
    elif kind == "transformer":
        model = TransformerClassifier(mc, shape[1], shape[2])
    elif kind == "bert":
        d = minilm_dir()
        need = "config.json" if args.random_init else "model.safetensors"
        if not (d / need).is_file():
            sys.exit(f"minilm-sst2 needs all-MiniLM-L6-v2's {need} in {d} (scripts/fetch-minilm.sh, or set COTEXT_MINILM)")
        model = BertClassifier(mc, shape[1], shape[2], d, args.random_init)
    elif kind == "lstm_attention":
        model = LstmSeq2Seq(mc, shape[1])
    elif kind == "transformer_seq2seq":
        model = TransformerSeq2Seq(mc, shape[1])
    else:
        sys.exit(f"{config_path}: model kind {kind!r} is not replicated")
    model.to(device)
    model.train()
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in synthetic_batch(shape).items()}
    ignore = PAD if shape[0] == "translate" else None
    targets = batch["tgt_out"] if shape[0] == "translate" else batch["labels"]
    opt = tc.get("optimizer", {})
    assert opt.get("kind", "adamw") == "adamw"
    params = [p for p in model.parameters() if p.requires_grad]

    def adamw():
        # cotext's defaults where the config is silent: betas (0.9, 0.999), eps 1e-8, wd 0.01.
        return torch.optim.AdamW(params, lr=LR, betas=(opt.get("beta1", 0.9), opt.get("beta2", 0.999)),
                                 eps=opt.get("eps", 1e-8), weight_decay=opt.get("weight_decay", 0.01))

    opt_a = adamw()
    opt_b = adamw() if args.objective == "cot" else None
    clip = tc.get("clip_norm")
    smoothing = tc.get("label_smoothing", 0.0)

    def update(optimizer, loss, pass_name, always_norm):
        if not math.isfinite(loss.item()):
            raise SystemExit(f"non-finite {pass_name} loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # cotext computes the primary pass's gradient norm even without clipping.
        if clip is not None or always_norm:
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"))
            if not math.isfinite(norm.item()):
                raise SystemExit(f"non-finite {pass_name} gradient norm")
        optimizer.step()

    def step():
        with autocast():
            loss = cross_entropy(model(batch).float(), targets, ignore, smoothing)
        update(opt_a, loss, "primary", True)
        if opt_b is not None:
            # Algorithm 1: a second forward pass with the updated weights.
            with autocast():
                c = complement_entropy(model(batch).float(), targets, ignore)
            update(opt_b, c, "complement", False)
        return loss.item()

    for _ in range(args.warmup):
        step()
    times, loss = [], float("nan")
    start = time.perf_counter()
    for _ in range(args.steps):
        s = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - s)
    sync()
    total = time.perf_counter() - start
    times.sort()
    tokens = batch["tokens"]
    print(json.dumps({
        "side": "pytorch",
        "workload": args.workload,
        "objective": args.objective,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "precision": args.precision,
        "random_init": args.random_init,
        "parameters": sum(p.numel() for p in params),
        "tokens_per_update": tokens,
        "ms_per_update": 1e3 * total / args.steps,
        "ms_median": 1e3 * times[len(times) // 2],
        "tokens_per_s": tokens * args.steps / total,
        "peak_rss_mib": peak_rss_mib(),
        "clip_norm": clip,
        "chunked_loss": tc.get("chunked_loss", False),
        "last_loss": loss,
        "torch": torch.__version__,
        **gpu_memory(),
    }))


def loss_bench(args, device, amp_dtype, sync, gpu_memory):
    """train_step.rs's `loss` workload: F.cross_entropy or the complement entropy
    above, forward + backward on random logits [rows, vocab] (every tenth target
    the padding id), in the precision's dtype."""
    n, v = args.rows, args.vocab
    g = torch.Generator().manual_seed(0)
    z = (3.0 * torch.randn(n, v, generator=g)).to(device=device, dtype=amp_dtype or torch.float32)
    z.requires_grad_(True)
    t = torch.tensor([PAD if i % 10 == 9 else 3 + (i * 7919) % (v - 3) for i in range(n)], device=device)

    def once():
        zf = z.float()
        value = cross_entropy(zf, t, PAD, 0.0) if args.objective == "ce" else complement_entropy(zf, t, PAD)
        (grad,) = torch.autograd.grad(value, z)
        grad[0, 0].item()
        return value.item()

    for _ in range(args.warmup):
        once()
    times, last = [], float("nan")
    start = time.perf_counter()
    for _ in range(args.steps):
        s = time.perf_counter()
        last = once()
        times.append(time.perf_counter() - s)
    sync()
    total = time.perf_counter() - start
    times.sort()
    print(json.dumps({
        "side": "pytorch", "workload": "loss", "objective": args.objective, "rows": n, "vocab": v,
        "device": args.device, "precision": args.precision, "steps": args.steps,
        "ms_per_update": 1e3 * total / args.steps, "ms_median": 1e3 * times[len(times) // 2],
        "tokens_per_s": n * args.steps / total, "peak_rss_mib": peak_rss_mib(), "last_loss": last,
        "torch": torch.__version__, **gpu_memory(),
    }))


if __name__ == "__main__":
    main()
