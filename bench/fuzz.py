"""Run the fuzz suite's examples (tests/test_fuzz.py) on demand and count outcomes.

    .venv/bin/python bench/fuzz.py --examples 10000 [--seed N] [--no-pg] [--show 5]

Prints one line per outcome (clean error, accepted, internal, hang, leak, unsafe write)
and, for every outcome that is a finding, a few examples with what they printed.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.test_fuzz import OUTCOMES, Example, Verdict, examples, fuzz_template, run_example


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (the same seed draws the same examples)")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only (no PostgreSQL database for `catalog`)")
    parser.add_argument("--show", type=int, default=5, help="examples shown per finding outcome")
    parser.add_argument("--top", type=int, default=0, help="also print the N most common clean errors")
    args = parser.parse_args(argv)

    counts: Counter[str] = Counter()
    samples: dict[str, list[tuple[Example, Verdict]]] = defaultdict(list)
    slowest: list[float] = []
    errors: Counter[str] = Counter()
    started = time.monotonic()
    with fuzz_template(pg=not args.no_pg) as template:
        print(f"catalog on {'PostgreSQL' if template.pg_url else 'SQLite'}; {args.examples} examples, seed {args.seed}",
              flush=True)

        @seed(args.seed)
        @settings(max_examples=args.examples, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(examples(template.config))
        def run(example: Example) -> None:
            verdict = run_example(template, example)
            counts[verdict.outcome] += 1
            if verdict.outcome == "clean error":
                errors[verdict.detail.split(":")[0][:50] if "/" in verdict.detail[:60] else verdict.detail[:50]] += 1
            slowest.append(verdict.seconds)
            if verdict.outcome not in ("accepted", "clean error") and len(samples[verdict.outcome]) < args.show:
                samples[verdict.outcome].append((example, verdict))
            total = sum(counts.values())
            if total % 500 == 0:
                print(f"  {total} examples, {time.monotonic() - started:.0f}s: {dict(counts)}", flush=True)

        run()
    total = sum(counts.values())
    print(f"\n{total} examples in {time.monotonic() - started:.0f}s "
          f"(slowest {max(slowest, default=0):.1f}s, median {sorted(slowest)[len(slowest) // 2] if slowest else 0:.2f}s)")
    for outcome in OUTCOMES:
        print(f"  {outcome:<13} {counts.get(outcome, 0):>7}")
    for line, count in errors.most_common(args.top):
        print(f"  {count:>6}  {line}")
    for outcome, found in samples.items():
        print(f"\n== {outcome}")
        for example, verdict in found:
            print(f"  argv: {example.argv!r}\n  files: {sorted(example.files)} env: {example.env}")
            print(f"  config: {example.config[:300]!r}\n  -> {verdict.detail[:600]!r}\n")
    return 0 if all(counts.get(o, 0) == 0 for o in ("internal", "hang", "leak", "unsafe write")) else 1


if __name__ == "__main__":
    sys.exit(main())
