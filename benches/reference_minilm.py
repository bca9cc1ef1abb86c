#!/usr/bin/env python3
"""Reference runtime for the student bench: the same all-MiniLM-L6-v2 weights in ONNX Runtime.

`benches/student.rs` writes its sentences to a file and runs this script with the same model
directory and batch size; it reports our extraction sentences/s as a ratio of this one.

The ONNX graph is built here, op by op, straight from model.safetensors and config.json (no
PyTorch, no export step, no download): embeddings, then per layer self-attention, LayerNorm
and an exact erf GELU, exactly as HF BertModel computes them. ONNX Runtime then applies its
usual graph optimisations (attention / LayerNorm / GELU fusion), as it would for an exported
model. Like our extraction, sentences are sorted by length before batching, padded to the
longest in each batch, truncated to --max-len pieces, and tokenization is timed.

Usage: reference_minilm.py --model DIR --sentences FILE [--batch-size 16] [--threads 2]
       [--max-len 128] [--dump-first]
Prints one JSON object: sentences, seconds, sentences_per_sec (and with --dump-first the mean
of the first sentence's hidden states, so the bench can check both runtimes agree).
Needs: pip install onnxruntime onnx numpy tokenizers
"""
import argparse
import json
import math
import struct
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def build_graph(weights, config):
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim, eps = hidden // heads, config.get("layer_norm_eps", 1e-12)
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    counter = [0]

    def node(op, inputs, **attrs):
        counter[0] += 1
        out = f"{op.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def linear(x, prefix):
        w = const(prefix + ".weight.T", weights[prefix + ".weight"].T.astype(np.float32))
        return node("Add", [node("MatMul", [x, w]), const(prefix + ".bias", weights[prefix + ".bias"])])

    def layer_norm(x, prefix):
        return node("LayerNormalization", [x, const(prefix + ".weight", weights[prefix + ".weight"]),
                                           const(prefix + ".bias", weights[prefix + ".bias"])], axis=-1, epsilon=eps)

    ids, mask = "input_ids", "attention_mask"
    # Embeddings: word + position[:T] + token type 0 (the student never uses segment B).
    word = node("Gather", [const("word", weights["embeddings.word_embeddings.weight"]), ids])
    seq_len = node("Gather", [node("Shape", [ids]), const("one", np.array([1], np.int64))])
    pos = node("Slice", [const("pos", weights["embeddings.position_embeddings.weight"]),
                         const("zero", np.array([0], np.int64)), seq_len, const("axis0", np.array([0], np.int64))])
    type0 = const("type0", weights["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(node("Add", [node("Add", [word, pos]), type0]), "embeddings.LayerNorm")
    # Additive attention mask (B, 1, 1, T): 0 for tokens, -1e4 for padding.
    m = node("Cast", [mask], to=TensorProto.FLOAT)
    m = node("Mul", [node("Sub", [const("f1", np.array(1.0, np.float32)), m]), const("neg", np.array(-1e4, np.float32))])
    m = node("Unsqueeze", [m, const("axes12", np.array([1, 2], np.int64))])
    split_shape = const("split_shape", np.array([0, 0, heads, head_dim], np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, hidden], np.int64))
    scale = const("scale", np.array(1.0 / math.sqrt(head_dim), np.float32))
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.query"), split_shape])], perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.key"), split_shape])], perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.value"), split_shape])], perm=[0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), m])
        ctx = node("MatMul", [node("Softmax", [scores], axis=-1), v])
        ctx = node("Reshape", [node("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
        x = layer_norm(node("Add", [linear(ctx, p + "attention.output.dense"), x]), p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        erf = node("Erf", [node("Mul", [h, const(f"isqrt2_{i}", np.array(1 / math.sqrt(2), np.float32))])])
        h = node("Mul", [node("Mul", [h, const(f"half_{i}", np.array(0.5, np.float32))]),
                         node("Add", [erf, const(f"one_{i}", np.array(1.0, np.float32))])])
        x = layer_norm(node("Add", [linear(h, p + "output.dense"), x]), p + "output.LayerNorm")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    graph = helper.make_graph(
        nodes, "minilm",
        [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--sentences", required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--dump-first", action="store_true")
    args = ap.parse_args()

    config = json.load(open(f"{args.model}/config.json"))
    model = build_graph(load_safetensors(f"{args.model}/model.safetensors"), config)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    tokenizer.enable_truncation(args.max_len)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    sentences = [line.rstrip("\n") for line in open(args.sentences, encoding="utf-8") if line.strip()]

    def run(batch):
        enc = tokenizer.encode_batch(batch)
        ids = np.array([e.ids for e in enc], np.int64)
        mask = np.array([e.attention_mask for e in enc], np.int64)
        return session.run(None, {"input_ids": ids, "attention_mask": mask})[0], mask

    run(sentences[: args.batch_size])  # warm-up, as the Rust bench loads and warms its model
    lengths = [len(e.ids) for e in tokenizer.encode_batch(sentences)]
    order = sorted(range(len(sentences)), key=lambda i: lengths[i])
    start = time.perf_counter()
    for i in range(0, len(order), args.batch_size):
        run([sentences[j] for j in order[i:i + args.batch_size]])
    seconds = time.perf_counter() - start
    result = {"runtime": f"onnxruntime {ort.__version__}", "sentences": len(sentences), "seconds": seconds,
              "sentences_per_sec": len(sentences) / seconds, "batch_size": args.batch_size, "threads": args.threads}
    if args.dump_first:
        hidden, mask = run(sentences[:1])
        result["first_mean"] = hidden[0][mask[0] == 1].mean(axis=0).tolist()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
