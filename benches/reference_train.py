#!/usr/bin/env python3
"""Reference for the student bench's training figure: the same MiniLM fine-tuned in PyTorch eager.

`benches/student.rs` writes its synthetic training sentences (each with its drug and adverse
event where it is labeled) to a JSON file and runs this script; it reports our training
tokens/s as a ratio of this one. What matches ours: the weights (model.safetensors), the
tokenizer, the sentences, the batch size, the batching (shuffled, length-sorted within pools of
50 batches, batches shuffled: `fit::length_bucketed`), frozen word embeddings, the entity
tagger over every token and the drug-conditioned relation tagger ([token ; mean of the drug's
pieces] -> linear) for each labeled drug, dropout 0.1 on the heads' inputs, cross-entropy over
real tokens, gradient-norm clipping at 1.0, AdamW (weight decay 0.01) with linear warm-up and
decay. Timed as ours: every step, the first included, model loading excluded. Attention is
written out (matmul, softmax, matmul) as in HF BertModel's eager path.

Usage: reference_train.py --model DIR --sentences FILE [--steps 12] [--batch-size 16]
       [--threads 2] [--lr 1e-4]
Prints one JSON object: steps, tokens (real, unpadded), seconds, tokens_per_sec, runtime.
Needs: pip install torch numpy tokenizers onnx onnxruntime (the last two for reference_minilm's
safetensors reader, imported from next to this file)
"""
import argparse
import json
import math
import random
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from reference_minilm import load_safetensors

ENTITY_TAGS = {"DRUG": 1, "ADVERSE_EVENT": 3}  # B; I is B + 1. 0 is O.


class Layer(nn.Module):
    def __init__(self, hidden, heads, inner, eps):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, inner)
        self.output = nn.Linear(inner, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, bias):
        b, t, h = x.shape
        split = lambda y: y.view(b, t, self.heads, h // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(h // self.heads) + bias
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h)
        x = self.attention_norm(self.attention_out(context) + x)
        return self.output_norm(self.output(F.gelu(self.intermediate(x))) + x)


class Student(nn.Module):
    def __init__(self, config, entity_tags, relation_tags=3, dropout=0.1):
        super().__init__()
        h, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        self.words = nn.Embedding(config["vocab_size"], h)
        self.positions = nn.Embedding(config["max_position_embeddings"], h)
        self.types = nn.Embedding(config["type_vocab_size"], h)
        self.norm = nn.LayerNorm(h, eps=eps)
        self.layers = nn.ModuleList(
            Layer(h, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"]))
        self.entity = nn.Linear(h, entity_tags)
        self.relation = nn.Linear(2 * h, relation_tags)
        self.dropout = nn.Dropout(dropout)

    def load(self, weights):
        names = {"words": "embeddings.word_embeddings", "positions": "embeddings.position_embeddings",
                 "types": "embeddings.token_type_embeddings", "norm": "embeddings.LayerNorm"}
        inner = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                 "attention_out": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
                 "intermediate": "intermediate.dense", "output": "output.dense", "output_norm": "output.LayerNorm"}
        for i in range(len(self.layers)):
            names.update({f"layers.{i}.{k}": f"encoder.layer.{i}.{v}" for k, v in inner.items()})
        state = {}
        for ours, theirs in names.items():
            for part in ("weight", "bias"):
                if f"{theirs}.{part}" in weights:
                    state[f"{ours}.{part}"] = torch.from_numpy(weights[f"{theirs}.{part}"].copy())
        missing = self.load_state_dict(state, strict=False).missing_keys
        assert set(missing) == {"entity.weight", "entity.bias", "relation.weight", "relation.bias"}, missing

    def forward(self, ids, mask):
        t = ids.shape[1]
        x = self.words(ids) + self.types(torch.zeros_like(ids)) + self.positions(torch.arange(t))
        x = self.norm(x)
        bias = ((1.0 - mask.float()) * -1e9)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return x


def tags(offsets, spans):
    """BIO tags per piece: `spans` are (start char, end char, B tag)."""
    out = [0] * len(offsets)
    for start, end, b in spans:
        inside = [i for i, (a, z) in enumerate(offsets) if z > a and a >= start and z <= end]
        for n, i in enumerate(inside):
            out[i] = b if n == 0 else b + 1
    return out, (inside[0], inside[-1] + 1) if spans and inside else None


def examples(tokenizer, sentences):
    out = []
    for s in sentences:
        enc = tokenizer.encode(s["text"])
        spans, anchor, relation = [], None, None
        if s.get("drug"):
            d = s["text"].index(s["drug"])
            e = s["text"].index(s["event"])
            spans = [(d, d + len(s["drug"]), ENTITY_TAGS["DRUG"]), (e, e + len(s["event"]), ENTITY_TAGS["ADVERSE_EVENT"])]
            _, anchor = tags(enc.offsets, spans[:1])
            relation, _ = tags(enc.offsets, [(e, e + len(s["event"]), 1)])
        entity, _ = tags(enc.offsets, spans)
        out.append({"ids": enc.ids, "entity": entity, "anchor": anchor, "relation": relation})
    return out


def batches(examples, batch_size, rng):
    order = list(range(len(examples)))
    rng.shuffle(order)
    out = []
    for p in range(0, len(order), batch_size * 50):
        pool = sorted(order[p:p + batch_size * 50], key=lambda i: len(examples[i]["ids"]))
        out += [pool[i:i + batch_size] for i in range(0, len(pool), batch_size)]
    rng.shuffle(out)
    return out


def step_loss(model, batch):
    t = max(len(e["ids"]) for e in batch)
    pad = lambda xs, fill: torch.tensor([x + [fill] * (t - len(x)) for x in xs])
    ids = pad([e["ids"] for e in batch], 0)
    mask = pad([[1] * len(e["ids"]) for e in batch], 0)
    hidden = model(ids, mask)
    real = mask.bool()
    entity = model.entity(model.dropout(hidden))
    loss = F.cross_entropy(entity[real], pad([e["entity"] for e in batch], 0)[real])
    rows = [i for i, e in enumerate(batch) if e["anchor"]]
    if rows:
        selected = hidden[rows]
        pooled = torch.stack([hidden[i, batch[i]["anchor"][0]:batch[i]["anchor"][1]].mean(0) for i in rows])
        features = torch.cat([selected, pooled[:, None, :].expand_as(selected)], -1)
        relation = model.relation(model.dropout(features))
        targets = pad([batch[i]["relation"] for i in rows], 0)
        loss = loss + F.cross_entropy(relation[real[rows]], targets[real[rows]])
    return loss, int(mask.sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--sentences", required=True, help="JSON list of {text, drug?, event?}")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    config = json.load(open(f"{args.model}/config.json"))
    model = Student(config, entity_tags=1 + 2 * len(ENTITY_TAGS))
    model.load(load_safetensors(f"{args.model}/model.safetensors"))
    model.words.weight.requires_grad_(False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warmup = math.ceil(0.1 * args.steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else (args.steps - s) / max(args.steps - warmup, 1))
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    tokenizer.no_padding()  # the file pads to 128; batches pad to their longest, as ours
    data = examples(tokenizer, json.load(open(args.sentences)))
    plan = batches(data, args.batch_size, random.Random(42))

    tokens, start = 0, time.perf_counter()
    for step in range(args.steps):
        loss, n = step_loss(model, [data[i] for i in plan[step % len(plan)]])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += n
    seconds = time.perf_counter() - start
    print(json.dumps({"runtime": f"torch {torch.__version__} eager", "threads": args.threads, "steps": args.steps,
                      "tokens": tokens, "seconds": seconds, "tokens_per_sec": tokens / seconds,
                      "final_loss": loss.item()}))


if __name__ == "__main__":
    main()
