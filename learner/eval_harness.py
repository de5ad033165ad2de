"""`python -m learner.eval_harness`: evaluate a baseline on exported scenes (learner/evaluate/harness.py)."""

if __name__ == "__main__":
    from learner.evaluate.harness import main

    main()
