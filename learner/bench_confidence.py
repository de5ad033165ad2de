"""`python -m learner.bench_confidence`: the double-pick / p-confidence benchmark (learner/bench/confidence.py)."""

if __name__ == "__main__":
    from learner.bench.confidence import main

    raise SystemExit(main())
