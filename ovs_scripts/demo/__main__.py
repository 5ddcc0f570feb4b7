"""``python -m ovs_scripts.demo`` (``make demo``)."""

import sys

from ovs_scripts.demo import main

sys.exit(main())
