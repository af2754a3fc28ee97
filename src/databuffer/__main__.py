"""``python -m databuffer``: the command line, in :mod:`databuffer._cli`."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
