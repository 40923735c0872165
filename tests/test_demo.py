"""README's main command: the demo starts two simulators and the exporter, and both targets show up."""

from tests.metrics_text import value
from tests.support import LOOPBACK, ManagedProcess, exporter_cmd, free_port, http_get, wait_until


def test_demo_probes_both_generations(tmp_path):
    port = free_port()
    demo = ManagedProcess(exporter_cmd("demo", "--port", str(port), "--host", LOOPBACK, "--duration", "60"),
                          tmp_path / "demo.log")
    base = f"http://{LOOPBACK}:{port}"
    try:
        def both_detected():
            text = http_get(base + "/metrics", timeout=2)[1].decode()
            return (value(text, "whoasr_info", target="asr-v1", api="v1", version="1.0.0") == 1.0
                    and value(text, "whoasr_info", target="asr-v2", api="v2", version="1.0.0") == 1.0)

        wait_until(both_detected, timeout=40, interval=0.5, what="both demo targets detected")
        text = http_get(base + "/metrics")[1].decode()
        assert value(text, "whoasr_model_loaded", target="asr-v2", model="streaming_asr") == 1.0
        assert "whoasr-exporter demo is running" in demo.output()
    finally:
        code = demo.stop()
    assert code == 0, demo.output()[-2000:]
    assert "Traceback" not in demo.output()
