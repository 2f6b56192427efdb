"""`kamflat cat ...`: a table's records merged across its files (see kamflat/tools.py)."""
from kamflat.tools import run


def main(argv):
    return run("cat", argv)
