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
Optional "stage_prefix", "stage_suffixes", "stage_max_tokens": the same for the label stage's
own prompt (its few-shot turns as the prefix); reported as stage_* figures, with the tokens
computed per sentence (its own turn + the reply).
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

    end = tok("<|im_end|>")[0]

    def label(prefix, suffixes, max_tokens):
        """Seconds, reply tokens and own-turn tokens of answering each suffix from `prefix`,
        which is evaluated (cached) before the clock starts."""
        llm.reset()
        llm.eval(prefix)
        generated, fed, t0 = 0, 0, time.perf_counter()
        for suffix in suffixes:
            llm.n_tokens = len(prefix)
            ids = tok(suffix)
            llm.eval(ids)
            fed += len(ids)
            for _ in range(max_tokens):
                next_id = greedy()
                if next_id == end:
                    break
                llm.eval([next_id])
                generated += 1
        return time.perf_counter() - t0, generated, fed

    # Labeled sentences per hour: prefix cached, each sentence decoded to the end of its answer.
    label_s, generated, _ = label(prefix, spec.get("label_suffixes", []), spec.get("max_tokens", 96))
    labeled = len(spec.get("label_suffixes", []))
    stage = {}
    if spec.get("stage_prefix") and spec.get("stage_suffixes"):
        n = len(spec["stage_suffixes"])
        seconds, replied, fed = label(tok(spec["stage_prefix"]), spec["stage_suffixes"], spec.get("stage_max_tokens", 512))
        stage = {
            "stage_sentences": n,
            "stage_sentences_per_hour": n * 3600 / seconds,
            "stage_completion_tokens_per_sentence": replied / n,
            # The end-of-turn token is picked but never fed, so not computed.
            "stage_computed_tokens_per_sentence": (replied + fed) / n,
        }

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
        **stage,
    }))


if __name__ == "__main__":
    main()
