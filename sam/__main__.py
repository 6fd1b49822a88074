"""`python -m sam`, the same as the `sam` command: see sam/cli/."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
