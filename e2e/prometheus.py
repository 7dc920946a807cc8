"""A real Prometheus for the e2e suite, scraping a tiny exporter the test controls.

`GpuExporter` serves `DCGM_FI_DEV_GPU_UTIL{namespace, pod, gpu}` (the metric NVIDIA's DCGM
exporter publishes) from an http.server on 127.0.0.1, one settable value per pod. `Prometheus`
runs Prometheus, built from its Go module by e2e/cluster/build.sh (pinned in versions.env, cached
by version), on 127.0.0.1 with a temporary config that scrapes it every second. Both are context
managers and leave nothing running behind them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from e2e.cluster.plane import free_port, prometheus_path
from e2e.helpers import stop_process

METRIC = "DCGM_FI_DEV_GPU_UTIL"


class GpuExporter:
    """`set(namespace, pod, value)` to publish a pod's GPU utilisation (percent); `remove` to stop."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # one line per scrape is noise
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="gpu-exporter", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def set(self, namespace: str, pod: str, value: float) -> None:
        with self._lock:
            self._values[(namespace, pod)] = value

    def remove(self, namespace: str, pod: str) -> None:
        with self._lock:
            self._values.pop((namespace, pod), None)

    def render(self) -> str:
        lines = [f"# HELP {METRIC} GPU utilization (in %).", f"# TYPE {METRIC} gauge"]
        with self._lock:
            for (namespace, pod), value in sorted(self._values.items()):
                lines.append(f'{METRIC}{{gpu="0",namespace="{namespace}",pod="{pod}"}} {value:g}')
        return "\n".join(lines) + "\n"

    def __enter__(self) -> GpuExporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class Prometheus:
    """Prometheus on 127.0.0.1, scraping `targets` every second, data in a temp dir."""

    def __init__(self, *targets: str, binary: str | None = None) -> None:
        self.binary = binary or str(prometheus_path())
        self.targets = targets
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="comptroller-prometheus-"))
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        # JSON is YAML: no dependency on how a YAML dumper quotes things.
        return json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "gpu",
                "honor_labels": True,
                "static_configs": [{"targets": list(self.targets)}],
            }],
        })

    def __enter__(self) -> Prometheus:
        if not Path(self.binary).exists():
            raise RuntimeError(f"{self.binary} is missing: run `bash e2e/cluster/build.sh prometheus`")
        config = self._dir / "prometheus.yml"
        config.write_text(self._config())
        self._log = open(self._dir / "prometheus.log", "wb")  # noqa: SIM115 (closed in __exit__)
        self._process = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self._dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self._dir / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("prometheus did not become ready within 60s")

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            stop_process(self._process, timeout=15)
        if hasattr(self, "_log"):
            self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def query(self, promql: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)["data"]["result"]

    def wait_for_series(self, promql: str, *, count: int, timeout: float = 30) -> None:
        """Until `promql` returns at least `count` series (scrapes have landed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.query(promql)) >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{promql} did not return {count} series within {timeout:g}s")
