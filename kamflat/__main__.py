"""`python -m kamflat` is the `kamflat` command."""
import sys

from kamflat.cli import main

sys.exit(main())
