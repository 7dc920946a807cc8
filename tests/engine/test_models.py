import pytest

from controller.engine.loading import compile_object
from controller.engine.models import FinOpsException, FinOpsPolicy, GPUBudget, PolicyError

API = "finops.comptroller.dev/v1alpha1"


def cr(kind, spec, name="x", **extra):
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, **extra}, "spec": spec}


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            cr(
                "FinOpsPolicy",
                {
                    "gpu": {
                        "allowedInstanceTypes": [
                            {"instanceTypes": ["a"]},
                            {"when": {"env": []}, "instanceTypes": ["b"]},
                        ]
                    }
                },
                "ml-platform",
            ),
            "FinOpsPolicy/ml-platform: spec.gpu.allowedInstanceTypes[1].when: env: list at least one value",
        ),
        (
            cr("FinOpsPolicy", {"enforcement": "Deny"}),
            "FinOpsPolicy/x: spec.enforcement: Input should be 'Enforce', 'Warn' or 'Audit'",
        ),
        (
            cr("FinOpsPolicy", {"labels": {"required": [{"key": "a"}, {"key": "b", "pattern": "(["}]}}),
            "spec.labels.required[1].pattern: invalid regular expression",
        ),
        (
            cr(
                "FinOpsPolicy",
                {"labels": {"required": [{"key": "env", "allowedValues": ["a"], "default": "b"}]}},
            ),
            "spec.labels.required[0].default: default 'b' is not one of",
        ),
        (
            cr(
                "FinOpsPolicy",
                {"labels": {"required": [{"key": "cc", "pattern": "^cc-[0-9]+$", "default": "x"}]}},
            ),
            "spec.labels.required[0].default: default 'x' does not match",
        ),
        (
            cr("FinOpsPolicy", {"labels": {"required": [{"key": "team", "default": "not valid!"}]}}),
            "spec.labels.required[0].default: 'not valid!' is not a valid label value",
        ),
        (
            cr("FinOpsPolicy", {"labels": {"required": [{"key": "-bad"}]}}),
            "spec.labels.required[0].key: '-bad' is not a valid label key",
        ),
        (
            cr("FinOpsPolicy", {"labels": {"required": [{"key": "a"}, {"key": "a"}]}}),
            "spec.labels.required: Value error" if False else "label 'a' is listed twice",
        ),
        (
            cr("FinOpsPolicy", {"labels": {"requird": []}}),
            "spec.labels.requird: Extra inputs are not permitted",
        ),
        (
            cr("FinOpsPolicy", {"expiry": {"maxLifetime": "3 days"}}),
            "spec.expiry.maxLifetime: '3 days' is not a duration",
        ),
        (
            cr("FinOpsPolicy", {"expiry": {"maxLifetime": "24h", "default": "48h"}}),
            "spec.expiry: default 2d exceeds maxLifetime 1d",
        ),
        (
            cr("FinOpsPolicy", {"gpu": {"maxGPUsPerPod": -1}}),
            "spec.gpu.maxGPUsPerPod: Input should be greater than or equal to 0",
        ),
        (
            cr(
                "FinOpsPolicy",
                {"match": {"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}},
            ),
            "spec.match.selector.matchExpressions[0]: operator In needs at least one value",
        ),
        (
            cr("FinOpsPolicy", {"idle": {"prometheus": {"url": "prometheus:9090", "query": "up"}}}),
            "spec.idle.prometheus.url: String should match pattern",
        ),
        (
            cr("FinOpsPolicy", {"idle": {"action": "Delete"}}),
            "spec.idle.action: Input should be 'Notify' or 'Suspend'",
        ),
        (cr("FinOpsPolicy", {"idle": {"kinds": ["CronJob"]}}), "spec.idle.kinds[0]: Input should be"),
        (
            cr("FinOpsPolicy", {"idle": {"notifyBefore": "soon"}}),
            "spec.idle.notifyBefore: 'soon' is not a duration",
        ),
        (cr("GPUBudget", {"period": "Monthly"}), "GPUBudget/x: spec.gpuHours: Field required"),
        (
            cr("GPUBudget", {"gpuHours": 10, "period": "Yearly"}),
            "spec.period: Input should be 'Daily', 'Weekly' or 'Monthly'",
        ),
        (
            cr("GPUBudget", {"gpuHours": 10, "pricePerGPUHour": {"p4d.24xlarge": -1}}),
            "spec.pricePerGPUHour['p4d.24xlarge']: Input should be greater than or equal to 0",
        ),
        (
            cr(
                "FinOpsException",
                {"policies": ["*"], "rules": ["labels"], "expiresAt": "2026-12-31T00:00:00Z"},
                namespace="ml",
            ),
            "FinOpsException/x: spec.reason: Field required",
        ),
        (
            cr(
                "FinOpsException",
                {"policies": ["*"], "rules": ["cost"], "reason": "r", "expiresAt": "2026-12-31T00:00:00Z"},
            ),
            "spec.rules[0]: Input should be",
        ),
        (
            {
                "apiVersion": "finops.comptroller.dev/v1",
                "kind": "FinOpsPolicy",
                "metadata": {"name": "old"},
                "spec": {},
            },
            "FinOpsPolicy/old: apiVersion: expected finops.comptroller.dev/v1alpha1",
        ),
        (
            {"apiVersion": API, "kind": "FinOpsPolicy", "spec": {}},
            "FinOpsPolicy/<unnamed>: metadata: Field required",
        ),
    ],
)
def test_errors_name_the_object_and_the_field(obj, message):
    with pytest.raises(PolicyError) as info:
        compile_object(obj["kind"], obj)
    assert message in str(info.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(PolicyError) as info:
        FinOpsPolicy.from_object(cr("FinOpsPolicy", {"enforcement": "x", "gpu": {"maxGPUsPerPod": "many"}}))
    paths = [path for path, _ in info.value.problems]
    assert paths == ["spec.enforcement", "spec.gpu.maxGPUsPerPod"]


def test_defaults_and_compiled_matchers():
    policy = FinOpsPolicy.from_object(
        cr(
            "FinOpsPolicy",
            {
                "match": {"namespaces": ["ml-*"]},
                "labels": {"required": [{"key": "cc", "pattern": "^cc-[0-9]{3}$"}]},
                "gpu": {"allowedInstanceTypes": [{"when": {"env": ["dev"]}, "instanceTypes": ["g5.*"]}]},
                "expiry": {"requiredWhen": {"env": ["exp"]}, "maxLifetime": "72h"},
            },
        )
    )
    spec = policy.spec
    assert spec.enforcement == "Enforce"
    assert spec.match.namespace_globs.matches("ml-nlp") and not spec.match.namespace_globs.matches("default")
    assert spec.labels.required[0].accepts("cc-123") and not spec.labels.required[0].accepts("cc-1234")
    assert spec.gpu.resources == ["*"]  # every accelerator, in GPU-equivalents
    assert "node.kubernetes.io/instance-type" in spec.gpu.instance_type_keys
    assert spec.gpu.allowlist_for({"env": "dev"}).globs.matches("g5.xlarge")
    assert spec.gpu.allowlist_for({"env": "prod"}) is None
    assert spec.expiry.key == "expires_at" and spec.expiry.notify_before.total_seconds() == 900
    assert spec.expiry.required_for({"env": "exp"}) and not spec.expiry.required_for({})


@pytest.mark.parametrize(
    ("required_when", "labels", "expected"),
    [(None, {}, False), ({}, {}, True), ({"e": ["x"]}, {"e": "x"}, True)],
)
def test_required_when(required_when, labels, expected):
    spec = {} if required_when is None else {"requiredWhen": required_when}
    policy = FinOpsPolicy.from_object(cr("FinOpsPolicy", {"expiry": spec}))
    assert policy.spec.expiry.required_for(labels) is expected


def test_budget_state_from_status():
    budget = GPUBudget.from_object(
        {
            **cr("GPUBudget", {"gpuHours": 500}),
            "status": {
                "usedGPUHours": 123.5,
                "period": {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
                "futureField": 1,
            },
        }
    )
    assert budget.state.used_gpu_hours == 123.5
    assert budget.state.period_end == "2026-12-01T00:00:00Z"
    assert budget.spec.admission == "Exhausted" and budget.spec.period == "Monthly"
    assert GPUBudget.from_object(cr("GPUBudget", {"gpuHours": 1})).state.used_gpu_hours == 0


def test_exception_coverage():
    exc = FinOpsException.from_object(
        cr(
            "FinOpsException",
            {"policies": ["a"], "rules": ["*"], "reason": "r", "expiresAt": "2026-12-31"},
            namespace="ml",
        )
    )
    assert exc.namespace == "ml"
    assert exc.spec.covers("a", "gpu") and not exc.spec.covers("b", "gpu")
    assert exc.spec.expires_at.tzinfo is not None


def test_models_serialize_back_to_the_crd_field_names():
    policy = FinOpsPolicy.from_object(
        cr("FinOpsPolicy", {"gpu": {"maxGPUsPerPod": 4}, "expiry": {"maxLifetime": "72h"}})
    )
    dumped = policy.model_dump(by_alias=True, exclude_none=True)
    assert dumped["spec"]["gpu"]["maxGPUsPerPod"] == 4
    assert dumped["spec"]["expiry"]["maxLifetime"] == "3d"
    assert FinOpsPolicy.from_object(dumped).model_dump(by_alias=True, exclude_none=True) == dumped
