"""A faithful fake whoAsr server (both API generations) for tests, benchmarks and demos.

It follows the shared description of whoAsr on the wire (whoasr-api.md), quirks included: /health
blocks the whole server for `health_delay`, model loads and v1 inference block it too, v2 answers
unknown GETs with HTML, streaming results are incremental pieces, a malformed WebSocket message leaves a
silent "zombie" socket, and so on.

Admin API (JSON in and out, under a prefix whoAsr never uses):
  PUT    /-/sim/faults/{endpoint}   {"latency": s, "status": code, "garbage": true, "wrong_shape": true|"list",
                                     "hang": true, "model_exception": true, "drop_after": n,
                                     "substitute_chars": n, "never_start": true}   (replaces that endpoint's faults)
  DELETE /-/sim/faults/{endpoint}, DELETE /-/sim/faults, GET /-/sim/faults
         endpoints: health model_info recognize punctuation vad timestamp stream stream_vad
  GET|PUT /-/sim/system             {"cpu_percent", "memory_percent", "memory_total_gb", "memory_available_gb",
                                     "disk_percent"}: numbers or "unknown"; what /health reports
  GET /-/sim/models, PUT /-/sim/models/{type}  {"loaded": bool, "fail_load": bool}   (no load delay)
  GET|PUT /-/sim/load_delay         {"seconds": x}   (how long a real load blocks the server; default 2)
  GET|DELETE /-/sim/stats           requests seen per endpoint, open WebSockets, per-model use,
                                    on-demand model loads per model type, WebSocket messages received
                                    per type, sockets ended per close code (1006: no close frame), and
                                    the uploads v2's /timestamp/predict leaked (files, bytes)
"""

from exporter.simulator.app import add_arguments, build_app, openapi_document, run
from exporter.simulator.state import SIM_KEY, SimState, SimulatorOptions

__all__ = ["SimulatorOptions", "build_app", "add_arguments", "run", "openapi_document", "SIM_KEY", "SimState"]
