"""`python -m learner.pretrain`: the wide model, self-supervised in the randomised twin (learner/loop/pretrain.py)."""

if __name__ == "__main__":
    from learner.loop.pretrain import main

    raise SystemExit(main())
