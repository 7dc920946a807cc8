"""Fakes for the metering side of the operator (controller.operator.accounting, .runs): the subset of
our client layer (`controller.k8s.workloads.Workloads`) the metering tick and the queue sweep use,
the pod cache, and the `MeteringState` they run in."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from controller import constants
from controller.k8s.ledgers import ledger_name
from controller.k8s.workloads import Conflict, NotFound
from controller.metering.usage import PodRecord
from controller.operator.accounting import MeteringState
from controller.operator.settings import MeteringSettings, OperatorConfig


class FakeWatch:
    """The pod cache: whatever records a test puts in `pods`, always synced, no tombstones."""

    def __init__(self, records: Iterable[PodRecord] = ()) -> None:
        self.pods = list(records)

    def records(self):
        return tuple(self.pods)

    def tombstones(self):
        return ()

    def uids(self):
        return frozenset(p.uid for p in self.pods)

    def ready(self):
        return True


class FakeApi:
    """The subset of `Workloads` metering and the queue use: ledgers (ConfigMaps) with
    compare-and-swap, budget statuses, pod patches and Events.

    `listed` holds what the API server lists per kind (GPUBudgets, Nodes, GPUEquivalences...):
    none unless a test adds them. A patch of a pod named `gone...` fails as NotFound. With a
    `watch`, a patch that removes the budget gate goes to that cache too, as the real watch
    would report it."""

    def __init__(self, watch: FakeWatch | None = None) -> None:
        self.watch = watch
        self.configmaps: dict[str, dict] = {}
        self.statuses: dict[str, dict] = {}
        self.events: list[dict] = []
        self.patches: list[tuple[str, str, dict, str | None]] = []
        """(namespace, name, body, content type) of every patch, in order."""
        self.listed: dict[str, list[dict]] = {}
        self.rv = 0

    def iter_objects(self, resource, **_):
        return iter(copy.deepcopy(self.listed.get(resource.kind, [])))

    def list_objects(self, resource, **kwargs):
        return list(self.iter_objects(resource, **kwargs))

    def get(self, resource, namespace, name):
        obj = self.configmaps.get(name)
        return copy.deepcopy(obj) if obj else None

    def request(self, method, path, *, body=None, content_type=None, query=None):
        if path.endswith("/status"):
            self.statuses[path.split("/")[-2]] = body["status"]
            return {}
        name = body["metadata"]["name"]
        if method == "POST":
            if name in self.configmaps:
                raise Conflict(409, "exists")
        elif self.configmaps[name]["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]:
            raise Conflict(409, "changed")
        self.rv += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.rv)
        self.configmaps[name] = stored
        return copy.deepcopy(stored)

    def patch(self, resource, namespace, name, body, *, content_type=None):
        self.patches.append((namespace, name, copy.deepcopy(body), content_type))
        if name.startswith("gone"):
            raise NotFound(404, "gone")
        if self.watch is not None:
            gates = (body.get("spec") or {}).get("schedulingGates") or ()
            if any(g.get("$patch") == "delete" and g.get("name") == constants.BUDGET_GATE for g in gates):
                self.watch.pods = [replace(p, gated=False) if p.uid == body["metadata"]["uid"] else p
                                   for p in self.watch.pods]
        return {}

    def emit_event(self, obj, *, reason, message, type_="Normal", now=None):
        self.events.append({"object": obj["metadata"]["name"], "kind": obj["kind"], "reason": reason,
                            "message": message, "type": type_})

    def ledger(self, budget: str) -> dict:
        """The committed ledger of `budget`, as JSON."""
        return json.loads(self.configmaps[ledger_name(budget)]["data"][constants.LEDGER_KEY])

    def released(self) -> list[str]:
        """Pods whose budget gate was removed, in order (finalizer patches left out)."""
        return [name for _, name, body, _ in self.patches if "schedulingGates" in (body.get("spec") or {})]

    def reasons(self, reason: str) -> list[str]:
        """The objects told `reason`, in order."""
        return [e["object"] for e in self.events if e["reason"] == reason]


def state_for(api, watch, executor, clock: list[datetime], *, dry_run: bool = False) -> MeteringState:
    """A fresh operator's metering state (nothing in memory) that reads the time from `clock[0]`."""
    config = OperatorConfig(namespace="comptroller-system", dry_run=dry_run,
                            metering=MeteringSettings(interval=1))
    return MeteringState(config=config, api=api, watch=watch, executor=executor, clock=lambda: clock[0])
