"""``python -m memo_edge ...`` runs the ``memo-edge`` command (also what ``torchrun -m memo_edge`` starts)."""

from memo_edge.cli import main

if __name__ == "__main__":
    main(prog_name="memo-edge")
