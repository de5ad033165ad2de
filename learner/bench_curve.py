"""`python -m learner.bench_curve`: the learning-curve benchmark (learner/bench/curve.py)."""

if __name__ == "__main__":
    from learner.bench.curve import main

    raise SystemExit(main())
