#!/usr/bin/env python3
"""Reference figures for `cargo bench --bench teacher_server`: llama.cpp (llama-cpp-python)
on the same GGUF and the same ChatML prompt, batch 1, greedy.

Prints one JSON object: prefill and decode tokens/s, and the per-request prefill time when a
shared prompt prefix stays in llama.cpp's KV cache (its own prefix reuse).

Usage: bench_llama_cpp.py MODEL PROMPT_JSON THREADS N_DECODE
PROMPT_JSON: {"prompt": "<ChatML text>", "prefix": "<shared prefix text>", "suffixes": [...],
              "label_suffixes": [...], "max_tokens": N}
label_suffixes: one rendered user turn (ending in the assistant header) per ADE sentence; each is
answered greedily from the cached prefix until <|im_end|> or max_tokens, one after the other
(llama-cpp-python serves one sequence at a time): ADE sentences per hour, the goal's unit.
"""
import json
import sys
import time

import llama_cpp
import numpy as np


def main():
    model, prompt_path, threads, n_decode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    spec = json.load(open(prompt_path))
    llm = llama_cpp.Llama(model_path=model, n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, verbose=False)
    tok = lambda text: llm.tokenize(text.encode(), add_bos=False, special=True)
    n_vocab = llm.n_vocab()
    # The last evaluated position's logits, straight from the context: `llm.scores` is not
    # filled after rewinding `n_tokens` (it gave token 0, "!", forever, so replies never ended).
    greedy = lambda: int(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).argmax())
    prompt = tok(spec["prompt"])

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_decode):
        llm.eval([greedy()])
    decode_s = time.perf_counter() - t0

    # Prefix reuse: evaluate the shared prefix once, then each request's own tokens only.
    prefix = tok(spec["prefix"])
    llm.reset()
    llm.eval(prefix)
    per_request = []
    for suffix in spec["suffixes"]:
        ids = tok(suffix)
        llm.n_tokens = len(prefix)  # rewind to the cached prefix (llama-cpp-python's own trick)
        t0 = time.perf_counter()
        llm.eval(ids)
        per_request.append(time.perf_counter() - t0)

    # Labeled sentences per hour: prefix cached, each sentence decoded to the end of its answer.
    end = tok("<|im_end|>")[0]
    generated, t0 = 0, time.perf_counter()
    for suffix in spec.get("label_suffixes", []):
        llm.n_tokens = len(prefix)
        llm.eval(tok(suffix))
        for _ in range(spec.get("max_tokens", 96)):
            next_id = greedy()
            if next_id == end:
                break
            llm.eval([next_id])
            generated += 1
    label_s = time.perf_counter() - t0
    labeled = len(spec.get("label_suffixes", []))

    print(json.dumps({
        "prompt_tokens": len(prompt),
        "prefill_tokens_per_s": len(prompt) / prefill_s,
        "decode_tokens": n_decode,
        "decode_tokens_per_s": n_decode / decode_s,
        "prefix_tokens": len(prefix),
        "cached_prefix_prefill_s": sum(per_request) / len(per_request),
        "label_sentences": labeled,
        "label_sentences_per_hour": labeled * 3600 / label_s if labeled else None,
        "label_completion_tokens_per_sentence": generated / labeled if labeled else None,
        "llama_cpp_python": llama_cpp.__version__,
    }))


if __name__ == "__main__":
    main()
