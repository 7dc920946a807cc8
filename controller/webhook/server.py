"""`comptroller webhook`: serve the admission webhook over HTTPS with uvicorn.

TLS 1.2 is the minimum and plain HTTP is never served. uvicorn loads the certificate once, so the
server re-runs `load_cert_chain` on its own SSLContext when the files change (a rotated Secret,
`comptroller certs ensure`): new handshakes get the new certificate, open connections keep theirs.
The reload runs on the event loop, the same thread that does handshakes, so they never race.

The policy view is the cluster's (a list+watch cache) unless `--policies DIR` serves files.
`--workers N` forks N processes sharing one listening socket, each with its own view.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from controller.webhook.settings import DEFAULT_KUEUE_CONTROLLER, DEFAULT_NAMESPACE, WebhookSettings

log = logging.getLogger(__name__)

CERT_CHECK_SECONDS = 5.0
# TLS 1.2 suites (1.3 ones are always on): forward secrecy and AEAD only, which the API server's
# Go client offers first anyway.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8443, help="HTTPS port (default: %(default)s)")
    parser.add_argument("--cert-file", required=True, type=Path, help="serving certificate (PEM)")
    parser.add_argument("--key-file", required=True, type=Path, help="its private key (PEM)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE,
        help="the webhook's own namespace, never matched (default: $POD_NAMESPACE or %(default)s)",
    )
    parser.add_argument(
        "--failure-mode",
        choices=("ignore", "deny"),
        default="ignore",
        help="answer to an internal error: admit with a warning, or deny (default: %(default)s)",
    )
    parser.add_argument(
        "--policies",
        type=Path,
        help="serve the policies in this file or directory instead of watching the cluster",
    )
    parser.add_argument(
        "--cert-reload-interval",
        type=float,
        default=CERT_CHECK_SECONDS,
        metavar="SECONDS",
        help="how often to check the certificate files for rotation (default: %(default)s)",
    )
    parser.add_argument(
        "--queue-releaser",
        action="append",
        metavar="USERNAME",
        help="who may take a queueing GPUBudget's gate off a pod, as the API server names them (repeat "
        "for several; default: system:serviceaccount:NAMESPACE:comptroller-operator)",
    )
    parser.add_argument(
        "--kueue-controller",
        action="append",
        metavar="USERNAME",
        help="who may take Kueue's admission gate off a pod a queueing GPUBudget covers: Kueue's "
        f"controller, as the API server names it (repeat for several; \"\" for nobody; default: "
        f"{DEFAULT_KUEUE_CONTROLLER})",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default: %(default)s)")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="(default: info)"
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = settings_of(args)
    for path in (args.cert_file, args.key_file):
        if not path.is_file():
            print(f"comptroller webhook: {path}: no such file", file=sys.stderr)
            return 2
    if args.policies is not None and not args.policies.exists():
        print(f"comptroller webhook: {args.policies}: no such file or directory", file=sys.stderr)
        return 2
    if args.workers > 1:
        return _run_workers(args, settings)
    return _serve(args, settings)


def settings_of(args: argparse.Namespace) -> WebhookSettings:
    return WebhookSettings(
        namespace=args.namespace,
        failure_mode=args.failure_mode,
        queue_releasers=frozenset(args.queue_releaser) if args.queue_releaser else None,
        # `--kueue-controller ""`: nobody (no Kueue in the cluster, so nobody may take its gate off).
        kueue_controllers=frozenset(filter(None, args.kueue_controller or (DEFAULT_KUEUE_CONTROLLER,))),
    )


def build_view(args: argparse.Namespace, settings: WebhookSettings):
    if args.policies is not None:
        from controller.webhook.views import view_from_path

        view = view_from_path(args.policies, excluded_namespaces=settings.excluded_namespaces)
        for key, error in view.errors().items():
            log.error("%s: %s", key, error)
        log.info("serving %d policies from %s", len(view.snapshot().policies), args.policies)
        return view
    from controller.k8s.cache import WatchCache
    from controller.k8s.config import load_api_client

    cache = WatchCache(load_api_client(args.kubeconfig), excluded_namespaces=settings.excluded_namespaces)
    cache.start()
    return cache


def api_readers(args: argparse.Namespace) -> dict[str, Any]:
    """How the webhook reads from the API server, each a call with a short timeout: the workload a
    `/scale` review scales (`fetch_workload`), the pods not bound to a node yet in a new claim's
    namespace (`list_unscheduled`), and a DRA claim or template a reviewed workload names that the
    watch cache does not know yet (`fetch_claim`). Serving policy files without `--kubeconfig`,
    there is no API access: none of them, and such reviews are admitted with a warning (claims
    count 1 GPU each)."""
    if args.policies is not None and not args.kubeconfig:
        return {}
    from controller.k8s.config import load_api_client
    from controller.k8s.pods import PODS, RESOURCE_CLAIM_TEMPLATES, RESOURCE_CLAIMS
    from controller.k8s.workloads import ApiResource, Workloads
    from controller.webhook.admission import PARENT_TIMEOUT_SECONDS

    workloads = Workloads(load_api_client(args.kubeconfig), timeout=1.0, component="comptroller-webhook")
    claim_kinds = {"ResourceClaim": RESOURCE_CLAIMS, "ResourceClaimTemplate": RESOURCE_CLAIM_TEMPLATES}

    def fetch_workload(group: str, version: str, plural: str, namespace: str, name: str):
        return workloads.get(ApiResource(group, version, plural, kind=""), namespace, name)

    def list_unscheduled(namespace: str):
        # A page at a time, and no page started past the review's deadline: the caller has
        # answered by then, and a namespace of many pending pods must not keep a thread paging.
        deadline = time.monotonic() + PARENT_TIMEOUT_SECONDS
        pods = []
        for pod in workloads.iter_objects(PODS, namespace=namespace, field_selector="spec.nodeName="):
            if time.monotonic() > deadline:
                raise TimeoutError(f"listing the pending pods of {namespace} took too long")
            pods.append(pod)
        return pods

    def fetch_claim(namespace: str, kind: str, name: str):
        return workloads.get(claim_kinds[kind], namespace, name)

    return {
        "fetch_workload": fetch_workload,
        "list_unscheduled": list_unscheduled,
        "fetch_claim": fetch_claim,
    }


class CertificateReloader:
    """Re-load the certificate into `context` whenever either file changes.

    A half-rotated pair (new certificate, old key) fails to load; the old one keeps serving and the
    next check tries again.
    """

    def __init__(self, context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
        self.context = context
        self.files = (Path(cert_file), Path(key_file))
        self._seen = self._stamp()

    def _stamp(self) -> tuple:
        stamps = []
        for path in self.files:
            try:
                st = path.stat()  # follows the ..data symlink swap of a mounted Secret
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def check(self) -> bool:
        stamp = self._stamp()
        if stamp == self._seen or None in stamp:
            return False
        try:
            self.context.load_cert_chain(*self.files)
        except (ssl.SSLError, OSError) as error:
            log.warning("certificate changed but does not load yet (%s); keeping the current one", error)
            return False
        self._seen = stamp
        log.info("reloaded the serving certificate from %s", self.files[0])
        return True

    async def watch(self, interval: float = CERT_CHECK_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()


def build_server(args: argparse.Namespace, settings: WebhookSettings, *, view=None):
    """The uvicorn Server and the certificate reloader for one process."""
    import uvicorn

    from controller.webhook.app import create_app
    from controller.webhook.transport import GatheringHttpProtocol

    readers: dict[str, Any] = {}
    if view is None:  # from the command line; tests and benchmarks pass a view of their own
        view, readers = build_view(args, settings), api_readers(args)
    app = create_app(view=view, settings=settings, **readers)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ssl_certfile=str(args.cert_file),
        ssl_keyfile=str(args.key_file),
        ssl_ciphers=TLS12_CIPHERS,
        log_level=args.log_level,
        access_log=False,
        lifespan="off",
        server_header=False,
        http=GatheringHttpProtocol,  # each response in one TLS record and one write
        ws="none",  # admission is plain HTTP; never hand the connection to another protocol
        # The API server keeps connections to webhooks alive; keep ours a little longer than its idle.
        timeout_keep_alive=95,
    )
    config.load()
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    return uvicorn.Server(config), CertificateReloader(config.ssl, args.cert_file, args.key_file)


def _serve(args: argparse.Namespace, settings: WebhookSettings, *, sockets=None) -> int:
    server, reloader = build_server(args, settings)
    # Everything built so far (app, policies, libraries) lives as long as the process: moving it out
    # of the collector's generations keeps full collections short, and so admission's p99 low.
    gc.collect()
    gc.freeze()

    async def main() -> None:
        watcher = asyncio.create_task(reloader.watch(args.cert_reload_interval))
        try:
            await server.serve(sockets=sockets)
        finally:
            watcher.cancel()

    # uvicorn picks uvloop only when it runs the loop itself; serving next to the certificate
    # watcher, we do, so we choose it here: its native TLS and sockets take a third off each request.
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main())
    return 0 if server.started else 1


def event_loop_factory():
    """uvloop's event loop when it is installed (it is a dependency, but optional on Windows)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run_workers(args: argparse.Namespace, settings: WebhookSettings) -> int:
    """Pre-fork: bind once, then each child serves the shared socket with its own app and view."""
    import socket

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os._exit(_serve(args, settings, sockets=[sock]))
        children.append(pid)
    log.info("serving https://%s:%d with %d workers", args.host, args.port, args.workers)

    def forward(signum, _frame):
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        while True:
            try:
                _, code = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        status = status or os.waitstatus_to_exitcode(code)
    return status
