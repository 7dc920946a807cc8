"""`comptroller operator`: the reconcile loops (metering and budgets, policy status, and the
lifecycle loops), run by kopf across all namespaces.

High availability is kopf peering: every replica runs, only the one with the highest priority
acts, the others stand by (their caches warm) and take over when its heartbeat stops for
`lifetime` seconds. SIGTERM and SIGINT stop kopf gracefully: daemons finish their tick, then exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
from dataclasses import replace
from typing import Any

import kopf

from controller import constants
from controller.k8s.reports import CHOICES as REPORT_FORMATS
from controller.operator.settings import (
    AuditSettings,
    ExpirySettings,
    IdleSettings,
    MeteringSettings,
    OperatorConfig,
    PeeringSettings,
    ServingSettings,
)

log = logging.getLogger(__name__)

KOPF_FINALIZER = f"{constants.GROUP}/kopf"
"""kopf's own finalizer (on GPUBudgets, for their daemons), named after us rather than kopf."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE", "comptroller-system"),
        help="Comptroller's own namespace, where metering ledgers live (default: $POD_NAMESPACE "
        "or comptroller-system)",
    )
    parser.add_argument("--peering", default="comptroller", metavar="NAME",
                        help="ClusterKopfPeering the replicas share; one is active (default: %(default)s)")
    parser.add_argument("--standalone", action="store_true", help="no peering: always active")
    parser.add_argument("--webhook-configuration", metavar="NAME",
                        help="MutatingWebhookConfiguration whose matchCondition follows the policy set, "
                        "so /mutate is skipped for pods it would not change (default: leave it alone)")
    parser.add_argument("--skip-settled-pods", action=argparse.BooleanOptionalAction, default=True,
                        help="with --webhook-configuration: keep the condition (default), or remove it so "
                        "every object goes to /mutate (for later mutating webhooks that change labels)")
    parser.add_argument("--priority", type=int, default=None,
                        help="this replica's peering priority (default: random, so replicas differ)")
    parser.add_argument("--metering-interval", type=float, default=30.0, metavar="SECONDS",
                        help="seconds between metering ticks (default: %(default)s)")
    parser.add_argument("--gpu-resource", action="append", metavar="NAME",
                        help="what a budget without `resources` counts as GPUs: resource names, globs or "
                        "DRA DeviceClasses (repeatable; default: *, every accelerator)")
    parser.add_argument("--team-label", default=constants.DEFAULT_GROUP_LABELS[0], metavar="KEY",
                        help="pod label the ledgers' per-day showback cells group by (default: %(default)s)")
    parser.add_argument("--cost-center-label", default=constants.DEFAULT_GROUP_LABELS[1], metavar="KEY",
                        help="second label of that grouping (default: %(default)s)")
    parser.add_argument("--no-metering-finalizer", action="store_true",
                        help="do not protect running GPU pods with the metering finalizer")
    parser.add_argument("--release-finalizers", action="store_true",
                        help="remove the metering finalizer from every pod and exit (for uninstall)")
    parser.add_argument("--liveness-port", type=int, default=8080, metavar="PORT",
                        help="liveness probe GET /healthz (default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=9090, metavar="PORT",
                        help="Prometheus GET /metrics, 0 disables (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true",
                        help="destructive actions (expiry, idle) only log and emit what they would do")
    parser.add_argument("--write-namespaces", metavar="NS,NS",
                        help="write (finalizers, terminations, scale-to-zero, Events, reports) only in these "
                        "namespaces and its own; pods elsewhere are metered without the finalizer. Default: "
                        "every namespace but kube-system, which is never written in")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    # --- other operator loops: add their flags below (expiry, idle, audit) ---
    parser.add_argument("--expiry-interval", type=float, default=30.0, metavar="SECONDS",
                        help="seconds between expiry sweeps (default: %(default)s)")
    parser.add_argument("--max-terminations-per-minute", type=int, default=60, metavar="N",
                        help="safety brake: at most N expired workloads terminated per rolling minute "
                        "(default: %(default)s)")
    parser.add_argument("--idle-interval", type=float, default=60.0, metavar="SECONDS",
                        help="seconds between idle sweeps (scale-to-zero, notices, suspensions; "
                        "default: %(default)s)")
    parser.add_argument("--wake-grace-period", type=float, default=3600.0, metavar="SECONDS",
                        help="after a wake, seconds before idle or expiry may act on it again "
                        "(default: %(default)s)")
    parser.add_argument("--prometheus-url", metavar="URL",
                        help="Prometheus for idle detection, overriding every policy's idle.prometheus.url")
    parser.add_argument("--prometheus-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="per-query timeout; a timeout means not idle (default: %(default)s)")
    parser.add_argument("--audit-interval", type=float, default=300.0, metavar="SECONDS",
                        help="seconds between background audits (default: %(default)s)")
    parser.add_argument("--max-results-per-report", type=int, default=1000, metavar="N",
                        help="results kept in each namespace's PolicyReport (default: %(default)s)")
    parser.add_argument("--reports-format", default="auto", choices=REPORT_FORMATS,
                        help="audit reports to write: auto (openreports.io Reports when served, else "
                        "wgpolicyk8s.io PolicyReports), openreports or wgpolicyk8s (default: %(default)s)")


def build_config(args: argparse.Namespace) -> OperatorConfig:
    priority = args.priority if args.priority is not None else random.randint(1, 1_000_000)
    metering = MeteringSettings(
        interval=args.metering_interval,
        gpu_resources=tuple(args.gpu_resource or constants.DEFAULT_GPU_RESOURCES),
        finalizer=not args.no_metering_finalizer,
        group_labels=(args.team_label, args.cost_center_label),
    )
    config = OperatorConfig(
        namespace=args.namespace,
        kubeconfig=args.kubeconfig,
        webhook_configuration=args.webhook_configuration or None,
        skip_settled_pods=args.skip_settled_pods,
        dry_run=args.dry_run,
        write_namespaces=_namespace_list(args.write_namespaces),
        peering=PeeringSettings(name=args.peering, standalone=args.standalone, priority=priority),
        metering=metering,
        serving=ServingSettings(liveness_port=args.liveness_port, metrics_port=args.metrics_port),
    )
    # --- other operator loops: derive their settings from args below (expiry, idle, audit) ---
    if args.max_terminations_per_minute < 1:
        raise SystemExit("--max-terminations-per-minute must be at least 1 (--dry-run stops terminations)")
    config = replace(
        config,
        expiry=ExpirySettings(
            interval=args.expiry_interval,
            max_terminations_per_minute=args.max_terminations_per_minute,
            dry_run=args.dry_run,
        ),
        idle=IdleSettings(interval=args.idle_interval, grace_period=args.wake_grace_period,
                          prometheus_timeout=args.prometheus_timeout, prometheus_url=args.prometheus_url),
        audit=AuditSettings(interval=args.audit_interval, max_results_per_report=args.max_results_per_report,
                            reports_format=args.reports_format),
    )
    return config


def _namespace_list(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    names = frozenset(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise SystemExit("--write-namespaces names no namespace (leave it out: everywhere but kube-system)")
    if "kube-system" in names:
        raise SystemExit("--write-namespaces: the operator never writes in kube-system")
    return names


def connection_info(configuration: Any) -> kopf.ConnectionInfo:
    """kopf's credentials from the kubernetes client's configuration (our --kubeconfig)."""
    token = (configuration.api_key or {}).get("BearerToken") or (configuration.api_key or {}).get(
        "authorization"
    )
    scheme, _, value = (token or "").partition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        scheme=scheme or None,
        token=value or None,
        username=configuration.username or None,
        password=configuration.password or None,
    )


@kopf.on.login()
def login(
    memo: Any, logger: Any, settings: kopf.OperatorSettings, **kwargs: Any
) -> kopf.ConnectionInfo | None:
    if memo.config.kubeconfig:
        return connection_info(memo.api_client.configuration)
    return kopf.login_via_client(logger=logger, settings=settings, **kwargs)


@kopf.on.startup()
def tune(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    config: OperatorConfig = memo.config
    settings.peering.priority = config.peering.priority
    settings.peering.lifetime = config.peering.lifetime
    settings.persistence.finalizer = KOPF_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=constants.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=constants.GROUP, key="last-handled-configuration"
    )
    # A dead connection must not silently stop a watch: reconnect at least every 5 minutes.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.posting.level = logging.WARNING  # kopf's own Events: problems only; ours are explicit


def release_finalizers(config: OperatorConfig) -> int:
    """Remove every finalizer the operator puts: the metering one from pods, kopf's from GPUBudgets.

    For uninstalling (nothing will meter or release them afterwards); safe to run any time, the
    next active operator adds them back where they belong.
    """
    from controller.k8s.config import load_api_client
    from controller.k8s.ledgers import BUDGETS
    from controller.k8s.pods import pods_with_finalizer, remove_finalizer
    from controller.k8s.workloads import JSON_PATCH, ApiError, Workloads

    api = Workloads(load_api_client(config.kubeconfig))
    released = 0
    for pod in list(pods_with_finalizer(api)):
        metadata = pod["metadata"]
        if remove_finalizer(api, namespace=metadata["namespace"], name=metadata["name"], uid=metadata["uid"]):
            released += 1
    budgets = 0
    try:
        objects = api.list_objects(BUDGETS)
    except ApiError as error:
        objects = []
        log.warning("could not list GPUBudgets: %s", error)
    for budget in objects:
        finalizers = budget["metadata"].get("finalizers") or []
        if KOPF_FINALIZER not in finalizers:
            continue
        # Custom resources take no strategic merge patch: swap the list, guarded by a test op.
        patch = [{"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                 {"op": "replace", "path": "/metadata/finalizers",
                  "value": [f for f in finalizers if f != KOPF_FINALIZER]}]
        try:
            api.patch(BUDGETS, None, budget["metadata"]["name"], patch, content_type=JSON_PATCH)
            budgets += 1
        except ApiError as error:
            log.warning("could not release GPUBudget %s: %s", budget["metadata"]["name"], error)
    log.info("released the metering finalizer from %d pods and kopf's from %d GPUBudgets", released, budgets)
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.log_level != "DEBUG":
        # kopf logs every handler invocation at INFO; that is per object per event.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    config = build_config(args)
    from controller.k8s.workloads import configure_writes

    configure_writes(config.write_namespaces, own=config.namespace)
    if args.release_finalizers:
        return release_finalizers(config)

    from controller.k8s.config import load_api_client
    from controller.operator import accounting, handlers, metrics  # noqa: F401  (handlers registers)

    api_client = load_api_client(config.kubeconfig)
    state = accounting.build_state(config, api_client)
    # Before the first list of pods: their records read the expiry under the policies' key.
    accounting.refresh_expiry_policies(state)
    state.watch.start()
    metrics.serve(config.serving.metrics_port)
    log.info(
        "operator starting: peering %s, metering every %gs, ledgers in namespace %s",
        "off" if config.peering.standalone else f"{config.peering.name} (priority {config.peering.priority})",
        config.metering.interval,
        config.namespace,
    )
    try:
        kopf.run(
            clusterwide=True,
            standalone=config.peering.standalone,
            peering_name=None if config.peering.standalone else config.peering.name,
            priority=config.peering.priority,
            liveness_endpoint=f"http://0.0.0.0:{config.serving.liveness_port}/healthz",
            memo=kopf.Memo(config=config, api_client=api_client, metering=state),
        )
    finally:
        state.watch.stop()
        state.executor.shutdown(wait=False, cancel_futures=True)
    log.info("operator stopped")
    return 0
