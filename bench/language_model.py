"""A language model's pace in the enclave's loader, on this machine, and what Bloom-560m would cost on the reference
instance by the same measure.

    .venv/bin/python -m bench.language_model [--prompts 20] [--new-tokens 32] [--out bench/results]

No weights can be downloaded here, so the model measured is the tests' small Bloom (random weights, a tokenizer
trained locally: ``tests/language_models.py``) at two sizes, loaded and run by the enclave's own code
(``containers/enclave/language_model.py``: the packed model unpacked, transformers on CPU, the sampler seeded
before each prompt). Reported: the model's parameters and packed bytes, the load time, new tokens per second and
seconds per prompt (greedy and sampled). Bloom-560m's figures are then estimated from its parameter count (CPU
decoding is bound by reading the weights once per token: seconds per token scale with the parameters), and priced
on the reference instance (an r5.8xlarge) at the estimate table's EC2 price. A benchmark, not a test: it asserts
nothing, and the Bloom-560m line is an estimate, labelled as one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from common.bundle.generation import GenerationSettings
from common.estimate import SHIPPED_TABLE, EstimateTable
from common.language_model import pack_folder
from containers.enclave.language_model import load_language_model
from tests.language_models import CORPUS, tiny_bloom

SIZES = {"bloom-tiny-2x64": {"layers": 2, "hidden": 64}, "bloom-small-4x256": {"layers": 4, "hidden": 256}}
BLOOM_560M_PARAMETERS = 559_214_592
REFERENCE_INSTANCE = "r5.8xlarge"


def measure(name: str, layers: int, hidden: int, prompts: int, new_tokens: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        packed = pack_folder(tiny_bloom(Path(scratch) / name, layers=layers, hidden=hidden))
    started = time.perf_counter()
    model = load_language_model(packed, threads=os.cpu_count())
    load_seconds = time.perf_counter() - started
    texts = [CORPUS[i % len(CORPUS)] for i in range(prompts)]
    result: dict[str, Any] = {
        "model": name, "parameters": model.parameters, "packed_bytes": len(packed), "load_seconds": load_seconds,
    }  # fmt: skip
    for mode, settings in (
        ("greedy", GenerationSettings(max_new_tokens=new_tokens)),
        ("sampled", GenerationSettings(max_new_tokens=new_tokens, temperature=0.8, top_p=0.9, seed=1)),
    ):
        model.complete(texts[:1], settings)  # the first call's warm-up is no prompt's cost
        started = time.perf_counter()
        completions = model.complete(texts, settings)
        seconds = time.perf_counter() - started
        generated = sum(len(model.tokenizer(c, return_token_type_ids=False)["input_ids"]) for c in completions)
        result[mode] = {
            "seconds_per_prompt": seconds / prompts,
            "new_tokens": generated,
            "tokens_per_second": generated / seconds if seconds else None,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = [measure(name, **size, prompts=args.prompts, new_tokens=args.new_tokens) for name, size in SIZES.items()]
    print(f"{'model':<20}{'parameters':>12}{'MB':>8}{'load s':>8}{'tok/s greedy':>14}{'s/prompt':>10}"
          f"{'tok/s sampled':>15}", flush=True)  # fmt: skip
    for r in results:
        print(
            f"{r['model']:<20}{r['parameters']:>12}{r['packed_bytes'] / 1e6:>8.2f}{r['load_seconds']:>8.2f}"
            f"{r['greedy']['tokens_per_second']:>14.1f}{r['greedy']['seconds_per_prompt']:>10.3f}"
            f"{r['sampled']['tokens_per_second']:>15.1f}"
        )
    # Bloom-560m by the larger model's pace per parameter (per token), on this machine's cores.
    larger = results[-1]
    seconds_per_token = 1 / larger["greedy"]["tokens_per_second"] * BLOOM_560M_PARAMETERS / larger["parameters"]
    table = EstimateTable.load(SHIPPED_TABLE)
    hourly = table.hourly(REFERENCE_INSTANCE)
    per_prompt = seconds_per_token * args.new_tokens
    estimate = {
        "model": "bloom-560m (estimated, not measured)",
        "parameters": BLOOM_560M_PARAMETERS,
        "seconds_per_token_here": seconds_per_token,
        "seconds_per_prompt_here": per_prompt,
        "instance": REFERENCE_INSTANCE,
        "hourly_price": hourly,
        "cost_per_1000_prompts_busy": 1000 * per_prompt / 3600 * hourly,
        "prices_as_of": table.as_of,
        "basis": f"{larger['model']}'s greedy pace scaled by parameters, on {os.cpu_count()} cores",
    }
    print(
        f"bloom-560m (estimate): {seconds_per_token:.3f} s per token, {per_prompt:.1f} s per prompt of "
        f"{args.new_tokens} tokens on {os.cpu_count()} cores; {estimate['cost_per_1000_prompts_busy']:.2f} USD per "
        f"1,000 prompts of busy {REFERENCE_INSTANCE} time at {hourly} USD/h (prices of {table.as_of})"
    )
    record = {
        "command": f"python -m bench.language_model --prompts {args.prompts} --new-tokens {args.new_tokens}",
        "machine": {"cores": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "results": results,
        "bloom_560m_estimate": estimate,
    }
    (args.out / "language_model.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out / 'language_model.json'}")


if __name__ == "__main__":
    main()
