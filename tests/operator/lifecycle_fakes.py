"""A fake at our own client layer (`controller.k8s.workloads.Workloads`): records every call.

Only what the effector and the sweeps use; objects live in a dict keyed by (kind, ns, name).
"""

from __future__ import annotations

import copy
from typing import Any

from controller.k8s.workloads import BUILTIN_RESOURCES, ApiResource, Conflict


def merge(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            target[key] = merge(target.get(key) if isinstance(target.get(key), dict) else {}, value)
        else:
            target[key] = value
    return target


class FakeWorkloads:
    def __init__(self, *objects: dict, hpas: list[dict] | None = None, served: bool = True) -> None:
        self.served = served
        """False: CRDs (PolicyReport, ML kinds) are not installed."""
        self.objects: dict[tuple[str, str, str], dict] = {}
        for obj in objects:
            self.add(obj)
        self.hpas = hpas or []
        self.calls: list[tuple] = []
        self.events: list[dict] = []

    def add(self, obj: dict) -> None:
        md = obj["metadata"]
        md.setdefault("resourceVersion", "1")
        self.objects[(obj["kind"], md.get("namespace", ""), md["name"])] = copy.deepcopy(obj)

    def resolve(
        self, kind: str, *, group: str | None = None, version: str | None = None
    ) -> ApiResource | None:
        if kind not in BUILTIN_RESOURCES and not self.served:
            return None
        return BUILTIN_RESOURCES.get(kind) or ApiResource(
            group or "example.org", version or "v1", kind.lower() + "s", kind
        )

    def iter_objects(self, resource, *, namespace=None, label_selector=None, metadata_only=False):
        for (kind, ns, _), obj in list(self.objects.items()):
            labels = obj["metadata"].get("labels") or {}
            if label_selector and labels.get(label_selector.split("=")[0]) != label_selector.split("=")[1]:
                continue
            if kind == resource.kind and (namespace is None or ns == namespace):
                if metadata_only:  # as PartialObjectMetadata: no spec, no status
                    yield {
                        "apiVersion": obj.get("apiVersion"),
                        "kind": kind,
                        "metadata": copy.deepcopy(obj["metadata"]),
                    }
                else:
                    yield copy.deepcopy(obj)

    def request(self, method, path, *, query=None, body=None, content_type=None):
        """Create (POST) and replace (PUT) of whole objects, which is all the report writer does."""
        self.calls.append(
            (method.lower(), body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
        )
        key = (body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
        if method == "POST" and key in self.objects:
            raise Conflict(409, "already exists")
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(int(body["metadata"].get("resourceVersion", "0")) + 1)
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def list_objects(self, resource, **kwargs):
        return list(self.iter_objects(resource, **kwargs))

    def get(self, resource, namespace, name):
        obj = self.objects.get((resource.kind, namespace or "", name))
        return copy.deepcopy(obj) if obj else None

    def patch(self, resource, namespace, name, body, **_: Any):
        self.calls.append(("patch", resource.kind, namespace, name, copy.deepcopy(body)))
        obj = self.objects[(resource.kind, namespace or "", name)]
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
            raise Conflict(409, "the object has been modified")
        merge(obj, copy.deepcopy(body))
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(obj)

    def delete(self, resource, namespace, name, *, uid=None, propagation="Background"):
        self.calls.append(("delete", resource.kind, namespace, name, propagation))
        return self.objects.pop((resource.kind, namespace or "", name), None) is not None

    def hpas_targeting(self, namespace, *, kind, name):
        return [h for h in self.hpas if h["spec"]["scaleTargetRef"] == {"kind": kind, "name": name}]

    def emit_event(self, obj, *, reason, message, type_="Normal", now=None):
        self.events.append(
            {
                "object": f"{obj['kind']}/{obj['metadata']['name']}",
                "reason": reason,
                "message": message,
                "type": type_,
            }
        )

    def mutations(self) -> list[tuple]:
        return [c for c in self.calls if c[0] in ("patch", "delete", "post", "put")]
