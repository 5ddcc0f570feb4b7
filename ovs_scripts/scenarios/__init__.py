"""Demo scenarios of the function apps, one module per app.

Each module registers its scenarios with ``ovs_scripts.demo.scenario`` at
import time; ``ovs_scripts.demo`` imports the modules named in
``FUNCTION_SCENARIOS`` (in demo order) that exist.
"""
