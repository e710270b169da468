"""``python -m clip4clip.export RUN OUT``: the command line of ``clip4clip.weights.export``."""
import sys

from clip4clip.weights.export import main

if __name__ == "__main__":
    sys.exit(main())
