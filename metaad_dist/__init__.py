"""metaad-dist: distributed first-order meta-learning for class-generalizable anomaly detection."""
import os as _os

# Ray reads this once, when it is first imported: set here, before any module of this package
# imports Ray, so that a local instance (`metaad` without RAY_ADDRESS, the benchmarks, the tests)
# binds 127.0.0.1 only instead of the machine's external interface (ray._private.services:
# 127.0.0.1 passed as _node_ip_address is otherwise resolved to the external address). Not on a
# cluster (RAY_ADDRESS set): there the driver must register with its real address.
if not _os.environ.get("RAY_ADDRESS"):
    _os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
