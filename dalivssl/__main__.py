"""`python -m dalivssl …` (also what `torchrun -m dalivssl pretrain …` runs)."""
from dalivssl.cli import main

if __name__ == "__main__":
    main()
