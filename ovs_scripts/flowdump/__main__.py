"""``python -m ovs_scripts.flowdump SWITCH [--diff] ...``: the same as ``ovslab flows``."""

import sys

from ovs_scripts.flowdump.cli import main

sys.exit(main())
