"""whoasr-exporter: Prometheus exporter and synthetic prober for whoAsr."""

__version__ = "0.1.0"
