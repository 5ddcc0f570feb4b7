"""Apps a lab may load that are tools, not fabric functions: their module, cookie id and band.

The product's pipeline and cookie table name only the fabric functions; a lab tool
registers itself here (importing this module is enough for a flow dump to name its flows).
"""

from __future__ import annotations

from ryu_apps.framework import cookies, pipeline

#: topology ``apps`` name -> the module ``ryu-manager`` loads
LAB_APPS = {"bench": "ovs_scripts.bench_app"}

cookies.register("bench", 0x7F)
pipeline.add_band(pipeline.FORWARD, pipeline.Band("bench", 2000, 2999, "bench/flow_programming synthetic routes"))
pipeline.add_ids("bench", groups=((0x7F000000, 0x7FFFFFFF),), meters=((0x7F000000, 0x7FFFFFFF),))
