"""The embedded teacher server through the official `openai` Python client.

Usage: python3 scripts/openai_python_check.py BASE_URL API_KEY MODEL

Run by tests/serve_openai.rs when `import openai` works (that test prints why it skipped
otherwise). Checks streaming with a usage chunk, n choices, logprobs, /v1/completions and a
400 naming its parameter; exits non-zero with the failed check's message.
"""

import sys

import openai


def main(base_url: str, api_key: str, model: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    messages = [{"role": "user", "content": "Name three rivers of Europe."}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
    text = whole.choices[0].message.content
    assert text, whole

    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
            continue
        parts.append(chunk.choices[0].delta.content or "")
    assert "".join(parts) == text, ("".join(parts), text)
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens, usage

    many = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, n=3, logprobs=True, top_logprobs=3
    )
    assert [c.index for c in many.choices] == [0, 1, 2], many
    assert len({c.message.content for c in many.choices}) == 1, many
    for token in many.choices[0].logprobs.content:
        alternatives = [t.logprob for t in token.top_logprobs]
        assert token.logprob <= 0 and len(alternatives) == 3, token
        assert alternatives == sorted(alternatives, reverse=True), token

    legacy = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2
    )
    assert legacy.object == "text_completion" and legacy.choices[0].text, legacy
    assert "".join(legacy.choices[0].logprobs.tokens) == legacy.choices[0].text, legacy

    try:
        client.chat.completions.create(model=model, messages=messages, n=0)
        raise AssertionError("n = 0 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.param == "n", (e.status_code, e.param, e.body)

    print(f"openai {openai.__version__}: chat, stream + usage, n, logprobs, completions, 400: ok")


if __name__ == "__main__":
    main(*sys.argv[1:4])
