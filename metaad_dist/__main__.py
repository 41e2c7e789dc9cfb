import sys

from metaad_dist.cli import main

sys.exit(main())
