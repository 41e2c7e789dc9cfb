"""`python -m metaad_dist`: the same CLI as the `metaad` command (cli.py)."""
import sys

from metaad_dist.cli import main

sys.exit(main())
