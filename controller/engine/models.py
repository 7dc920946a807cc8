"""Typed, validated CRs: FinOpsPolicy, GPUBudget, FinOpsException and GPUEquivalence (docs/crds.md).

`from_object(obj)` validates a whole CR as read from a file or the API server and raises
`PolicyError` naming the object and the path of the offending field, e.g.
`FinOpsPolicy/ml-platform: spec.gpu.allowedInstanceTypes[1].when: ...`. The CRD schemas catch
most mistakes at the API server; these models also catch what a schema cannot: regexes that do
not compile, defaults that are not valid label values or not allowed by the label's own rule,
a default expiry beyond the maximum lifetime.

Everything the engine matches against (selectors, globs, regexes, value sets) is compiled here,
once, at load; evaluation never parses or compiles.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from controller.constants import API_VERSION, DEFAULT_EXPIRY_KEY, DEFAULT_GPU_RESOURCES
from controller.engine.api import BudgetState
from controller.engine.durations import format_duration, parse_duration
from controller.engine.matching import EVERYTHING, GlobSet, Selector, when_matches

# Kubernetes label syntax (apimachinery validation.IsQualifiedName / IsValidLabelValue).
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY_RE = re.compile(rf"(?:{_PREFIX}/)?{_NAME}")
LABEL_VALUE_RE = re.compile(rf"(?:{_NAME})?")

DEFAULT_INSTANCE_TYPE_KEYS = (
    "node.kubernetes.io/instance-type",
    "karpenter.k8s.aws/instance-type",
    "cloud.google.com/gke-accelerator",
    "nvidia.com/gpu.product",
)
RULE_FAMILIES = ("labels", "gpu", "expiry", "budget")


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and LABEL_VALUE_RE.fullmatch(value) is not None


def _label_key(value: str) -> str:
    prefix, _, name = value.rpartition("/")
    if len(prefix) > 253 or len(name) > 63 or not LABEL_KEY_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid label key (an optional DNS prefix and '/', then a name)")
    return value


def _label_value(value: str) -> str:
    if not is_label_value(value):
        raise ValueError(
            f"{value!r} is not a valid label value (at most 63 characters: alphanumerics, '-', '_', '.', "
            "starting and ending with an alphanumeric)"
        )
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


LabelKey = Annotated[str, AfterValidator(_label_key)]
LabelValue = Annotated[str, AfterValidator(_label_value)]
Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
Timestamp = Annotated[datetime, AfterValidator(_aware)]


def _compile_now(model: BaseModel) -> None:
    """Compute a model's compiled matchers at load, not on the first admission.

    They are `cached_property`s: stored in the instance `__dict__`, so the hot path reads them as
    plain attributes (pydantic private attributes go through `__getattr__`, several times slower).
    """
    for name, member in vars(type(model)).items():
        if isinstance(member, cached_property):
            getattr(model, name)


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True
    )


# -- shared pieces -------------------------------------------------------------------------------


class LabelSelectorRequirement(_Model):
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> Self:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(_Model):
    """metav1.LabelSelector. Empty matches everything."""

    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)
    def model_post_init(self, context: Any) -> None:
        _compile_now(self)

    @cached_property
    def compiled(self) -> Selector:
        if not self.match_labels and not self.match_expressions:
            return EVERYTHING
        return Selector(self.match_labels, [(e.key, e.operator, e.values) for e in self.match_expressions])


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(min_length=1)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None


class Condition(BaseModel):
    """metav1.Condition."""

    model_config = ConfigDict(extra="allow", frozen=True, alias_generator=to_camel, populate_by_name=True)
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class _Tolerant(BaseModel):
    # Status is written by the operator, not by people: tolerate fields a newer operator adds.
    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=to_camel, populate_by_name=True)


class _Status(_Tolerant):
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None


# -- FinOpsPolicy --------------------------------------------------------------------------------


class MatchSpec(_Model):
    """Which workloads the policy applies to; every given condition must hold."""

    namespace_selector: LabelSelector | None = None
    namespaces: list[str] = Field(default_factory=list)
    exclude_namespaces: list[str] = Field(default_factory=list)
    kinds: list[str] = Field(default_factory=list)
    selector: LabelSelector | None = None
    gpu_only: bool = False
    def model_post_init(self, context: Any) -> None:
        _compile_now(self)

    @cached_property
    def namespace_globs(self) -> GlobSet:
        return GlobSet(self.namespaces)

    @cached_property
    def exclude_globs(self) -> GlobSet:
        return GlobSet(self.exclude_namespaces)

    @cached_property
    def kind_set(self) -> frozenset[str]:
        return frozenset(self.kinds)


_MAX_VERDICTS = 1024


class RequiredLabel(_Model):
    """A label every matched workload must carry; `allowedValues` and `pattern` both apply if given."""

    key: LabelKey
    allowed_values: list[LabelValue] | None = None
    pattern: Annotated[str, AfterValidator(_regex)] | None = None
    """A regular expression the whole value must match (re.fullmatch)."""
    default: LabelValue | None = None
    description: str = ""

    @field_validator("default")
    @classmethod
    def _default_is_allowed(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return value
        allowed = info.data.get("allowed_values")
        if allowed is not None and value not in allowed:
            raise ValueError(f"default {value!r} is not one of allowedValues {allowed}")
        pattern = info.data.get("pattern")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise ValueError(f"default {value!r} does not match pattern {pattern!r}")
        return value

    def model_post_init(self, context: Any) -> None:
        _compile_now(self)

    @cached_property
    def allowed_set(self) -> frozenset[str] | None:
        return frozenset(self.allowed_values) if self.allowed_values is not None else None

    @cached_property
    def regex(self) -> re.Pattern[str] | None:
        return re.compile(self.pattern) if self.pattern is not None else None

    def accepts(self, value: str) -> bool:
        allowed = self.allowed_set
        if allowed is not None and value not in allowed:
            return False
        regex = self.regex
        return regex is None or regex.fullmatch(value) is not None


class LabelsSpec(_Model):
    required: list[RequiredLabel] = Field(default_factory=list)
    inherit_from_namespace: bool = False
    """Mutation copies missing required labels from the workload's Namespace labels."""

    @field_validator("required")
    @classmethod
    def _unique_keys(cls, value: list[RequiredLabel]) -> list[RequiredLabel]:
        seen: set[str] = set()
        for item in value:
            if item.key in seen:
                raise ValueError(f"label {item.key!r} is listed twice")
            seen.add(item.key)
        return value

    def model_post_init(self, context: Any) -> None:
        _compile_now(self)

    @cached_property
    def keys(self) -> tuple[str, ...]:
        return tuple(rule.key for rule in self.required)

    @cached_property
    def verdicts(self) -> dict[tuple[str | None, ...], bool]:
        """`satisfied_by`, remembered per combination of values (bounded): a cluster's workloads
        carry a few teams, projects and environments, so the combinations repeat."""
        return {}

    def satisfied_by(self, labels: Mapping[str, str]) -> bool:
        """Whether `labels` carry every required label with a value its rule accepts."""
        values = tuple(map(labels.get, self.keys))
        try:
            verdict = self.verdicts.get(values)
        except TypeError:  # a list or map where a label value belongs (an unchecked CR): not remembered
            return self._judge(values)
        if verdict is None:
            verdict = self._judge(values)
            if len(self.verdicts) < _MAX_VERDICTS:
                self.verdicts[values] = verdict
        return verdict

    def _judge(self, values: tuple[Any, ...]) -> bool:
        return all(v is not None and r.accepts(v) for v, r in zip(values, self.required, strict=True))


def _when(value: dict[str, list[str]]) -> dict[str, list[str]]:
    for key, values in value.items():
        _label_key(key)
        if not values:
            raise ValueError(f"{key}: list at least one value")
    return value


When = Annotated[dict[str, list[str]], AfterValidator(_when)]


def _compile_when(value: dict[str, list[str]] | None) -> dict[str, frozenset[str]] | None:
    return None if value is None else {key: frozenset(values) for key, values in value.items()}


class InstanceTypeRule(_Model):
    """Allowed instance types (glob patterns) for workloads whose effective labels match `when`."""

    when: When = Field(default_factory=dict)
    instance_types: list[str] = Field(min_length=1)
    def model_post_init(self, context: Any) -> None:
        _compile_now(self)

    @cached_property
    def compiled_when(self) -> dict[str, frozenset[str]]:
        return _compile_when(self.when) or {}

    @cached_property
    def globs(self) -> GlobSet:
        return GlobSet(self.instance_types)


class GPUSpec(_Model):
    resources: list[str] = Field(default_factory=lambda: list(DEFAULT_GPU_RESOURCES), min_length=1)
    instance_type_keys: list[LabelKey] = Field(
        default_factory=lambda: list(DEFAULT_INSTANCE_TYPE_KEYS), min_length=1
    )
    require_instance_type: bool = False
    allowed_instance_types: list[InstanceTypeRule] = Field(default_factory=list)
    max_gpus_per_pod: int | None = Field(default=None, ge=0, alias="maxGPUsPerPod")
    def model_post_init(self, context: Any) -> None:
        _compile_now(self)

    @cached_property
    def resource_tuple(self) -> tuple[str, ...]:
        return tuple(self.resources)

    @cached_property
    def key_tuple(self) -> tuple[str, ...]:
        return tuple(self.instance_type_keys)

    def allowlist_for(self, labels: Mapping[str, str]) -> InstanceTypeRule | None:
        """The first entry whose `when` matches; None means no allowlist constrains this workload."""
        for rule in self.allowed_instance_types:
            if when_matches(rule.compiled_when, labels):
                return rule
        return None


class ExpirySpec(_Model):
    key: LabelKey = DEFAULT_EXPIRY_KEY
    required_when: When | None = None
    """Effective labels that make `expires_at` required. Omitted: never required (but validated when
    present); `{}`: required on every matched workload."""
    max_lifetime: Duration | None = None
    default: Duration | None = None
    notify_before: Duration = timedelta(minutes=15)

    @model_validator(mode="after")
    def _default_within_lifetime(self) -> Self:
        if self.default is not None and self.max_lifetime is not None and self.default > self.max_lifetime:
            raise ValueError(
                f"default {format_duration(self.default)} exceeds "
                f"maxLifetime {format_duration(self.max_lifetime)}"
            )
        return self

    def model_post_init(self, context: Any) -> None:
        _compile_now(self)

    @cached_property
    def required_when_sets(self) -> dict[str, frozenset[str]] | None:
        return _compile_when(self.required_when)

    def required_for(self, labels: Mapping[str, str]) -> bool:
        when = self.required_when_sets
        if when is None:
            return False
        return when_matches(when, labels)


class PrometheusSpec(_Model):
    url: str = Field(pattern=r"^https?://")
    query: str | None = Field(default=None, min_length=1)
    """PromQL; `$namespace` and `$name` are replaced by the workload's namespace and name. Omitted:
    the highest DCGM GPU utilisation of the workload's pods (the operator's `DEFAULT_IDLE_QUERY`)."""
    threshold: float = 5.0


IdleKind = Literal["Deployment", "StatefulSet", "Job", "JobSet", "PyTorchJob", "TFJob", "MPIJob", "RayJob"]
_IDLE_KINDS: tuple[IdleKind, ...] = ("Deployment", "StatefulSet")


class IdleSpec(_Model):
    selector: LabelSelector = Field(default_factory=LabelSelector)
    kinds: list[IdleKind] = Field(default_factory=lambda: [*_IDLE_KINDS])
    idle_after: Duration = timedelta(minutes=30)
    action: Literal["Notify", "Suspend"] | None = None
    """Omitted: Deployments and StatefulSets are scaled to zero, batch kinds only notified. `Notify`:
    every kind gets the `GPUIdle` notice and nothing is changed. `Suspend`: batch kinds are suspended
    `notifyBefore` after the notice (never deleted); Deployments and StatefulSets scaled to zero."""
    notify_before: Duration = timedelta(minutes=15)
    """How long before suspending a batch workload its `GPUIdle` notice comes."""
    prometheus: PrometheusSpec | None = None


class FinOpsPolicySpec(_Model):
    enforcement: Literal["Enforce", "Warn", "Audit"] = "Enforce"
    match: MatchSpec = Field(default_factory=MatchSpec)
    labels: LabelsSpec | None = None
    gpu: GPUSpec | None = None
    expiry: ExpirySpec | None = None
    idle: IdleSpec | None = None


# -- GPUBudget -----------------------------------------------------------------------------------


class BudgetPeriodStatus(_Tolerant):
    start: Timestamp | None = None
    end: Timestamp | None = None


class BudgetHistoryEntry(_Tolerant):
    start: Timestamp
    end: Timestamp
    used_gpu_hours: float = Field(alias="usedGPUHours")
    estimated_cost: float | None = None


class GPUBudgetSpec(_Model):
    selector: LabelSelector = Field(default_factory=LabelSelector)
    gpu_hours: float = Field(alias="gpuHours", ge=0)
    period: Literal["Daily", "Weekly", "Monthly"] = "Monthly"
    enforcement: Literal["Enforce", "Warn", "Audit"] = "Enforce"
    admission: Literal["Exhausted", "Projected"] = "Exhausted"
    when_exhausted: Literal["Deny", "Queue"] = "Deny"
    """`Queue`: a pod the budget cannot pay for now is created SchedulingGated and released by the
    operator when it can (docs/queueing.md); `Deny` refuses it."""
    alert_thresholds: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=lambda: [50, 80, 100]
    )
    price_per_gpu_hour: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, alias="pricePerGPUHour"
    )
    """Price per GPU-hour by instance type, with `default` for the rest (for cost estimates)."""
    resources: list[str] = Field(default_factory=lambda: list(DEFAULT_GPU_RESOURCES), min_length=1)
    """Extended resources counted as GPUs, as in FinOpsPolicy `spec.gpu.resources`."""
    def model_post_init(self, context: Any) -> None:
        _compile_now(self)

    @cached_property
    def resource_tuple(self) -> tuple[str, ...]:
        return tuple(self.resources)


class GPUBudgetStatus(_Status):
    period: BudgetPeriodStatus | None = None
    used_gpu_hours: float = Field(default=0.0, alias="usedGPUHours")
    remaining_gpu_hours: float | None = Field(default=None, alias="remainingGPUHours")
    remaining_percent: float | None = None
    """Share of `gpuHours` left (0-100), for the `Remaining %` printer column."""
    running_gpus: float = Field(default=0.0, alias="runningGPUs")
    estimated_cost: float | None = None
    history: list[BudgetHistoryEntry] = Field(default_factory=list)
    last_metered_at: Timestamp | None = None
    thresholds_reached: list[int] = Field(default_factory=list)
    queued_pods: int = 0
    """Pods waiting SchedulingGated for this budget (`whenExhausted: Queue`)."""
    reserved_gpu_hours: float = Field(default=0.0, alias="reservedGPUHours")
    """Under `Queue` with `Projected`: what the released, unfinished pods may still use this period."""


# -- FinOpsException -----------------------------------------------------------------------------


class FinOpsExceptionSpec(_Model):
    policies: list[str] = Field(min_length=1)
    """Policy (or GPUBudget) names, or `*`."""
    rules: list[Literal["labels", "gpu", "expiry", "budget", "*"]] = Field(min_length=1)
    selector: LabelSelector = Field(default_factory=LabelSelector)
    expires_at: Timestamp
    reason: str = Field(min_length=1)
    def model_post_init(self, context: Any) -> None:
        _compile_now(self)

    @cached_property
    def policy_set(self) -> frozenset[str]:
        return frozenset(self.policies)

    @cached_property
    def rule_set(self) -> frozenset[str]:
        return frozenset(self.rules)

    def covers(self, policy: str, rule: str) -> bool:
        policies, rules = self.policy_set, self.rule_set
        return ("*" in policies or policy in policies) and ("*" in rules or rule in rules)


# -- GPUEquivalence ------------------------------------------------------------------------------


class ProductSpec(_Model):
    """A GPU model, matched by a glob on the node's product label (`nvidia.com/gpu.product`)."""

    match: str = Field(min_length=1)
    mig_slices: int = Field(default=0, ge=0, le=64)
    memory_mib: int = Field(default=0, ge=0, alias="memoryMiB")
    partitions: dict[str, Annotated[int, Field(ge=1, le=64)]] = Field(default_factory=dict)


class DeviceClassSpec(_Model):
    equivalents: float = Field(default=1.0, ge=0, le=64)
    mig: bool = False
    all_devices: int = Field(default=8, ge=1, le=1024)


class GPUEquivalenceSpec(_Model):
    """Overrides of the built-in GPU-equivalents table (controller.engine.accelerators)."""

    resources: dict[str, Annotated[float, Field(ge=0, le=64)]] = Field(default_factory=dict)
    products: list[ProductSpec] = Field(default_factory=list)
    device_classes: dict[str, DeviceClassSpec] = Field(default_factory=dict)
    shared_replicas: int | None = Field(default=None, ge=1, le=1024)

    @field_validator("resources")
    @classmethod
    def _resource_names(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            if "/" not in name:
                raise ValueError(f"{name!r} is not an extended resource name (vendor.example/name)")
        return value


# -- the CRs -------------------------------------------------------------------------------------


class PolicyError(ValueError):
    """A policy, budget or exception that cannot be loaded. `str()` names the object and field path."""

    def __init__(self, obj: str, problems: list[tuple[str, str]]) -> None:
        self.object = obj
        self.problems = problems
        text = "; ".join(f"{path}: {msg}" if path else msg for path, msg in problems)
        super().__init__(f"{obj}: {text}")


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors(include_url=False):
        msg = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        problems.append((_path(item["loc"]), msg))
    return problems


class _Resource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    api_version: Literal["finops.comptroller.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Self:
        """Validate a whole CR; PolicyError names `Kind/name` and the offending field's path."""
        if not isinstance(obj, dict):
            problem = ("", f"expected a mapping, got {type(obj).__name__}")
            raise PolicyError(f"{cls.__name__}/<unknown>", [problem])
        raw_meta = obj.get("metadata")
        meta = raw_meta if isinstance(raw_meta, dict) else {}
        name = f"{cls.__name__}/{meta.get('name') or '<unnamed>'}"
        if obj.get("kind") != cls.__name__:
            raise PolicyError(name, [("kind", f"expected {cls.__name__}, got {obj.get('kind')!r}")])
        if obj.get("apiVersion") != API_VERSION:
            problem = ("apiVersion", f"expected {API_VERSION}, got {obj.get('apiVersion')!r}")
            raise PolicyError(name, [problem])
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            raise PolicyError(name, _problems(exc)) from None

    @property
    def name(self) -> str:
        return self.metadata.name


class FinOpsPolicy(_Resource):
    spec: FinOpsPolicySpec
    status: _Status | None = None


class GPUBudget(_Resource):
    spec: GPUBudgetSpec
    status: GPUBudgetStatus | None = None

    @property
    def state(self) -> BudgetState:
        """The metering the engine needs, from `status` (zero when the operator has not metered yet)."""
        if self.status is None:
            return BudgetState()
        end = self.status.period.end if self.status.period else None
        return BudgetState(
            used_gpu_hours=self.status.used_gpu_hours,
            period_end=end.strftime("%Y-%m-%dT%H:%M:%SZ") if end else None,
        )


class GPUEquivalence(_Resource):
    spec: GPUEquivalenceSpec
    status: _Status | None = None


class FinOpsException(_Resource):
    spec: FinOpsExceptionSpec
    status: _Status | None = None

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or ""


MODELS: dict[str, type[_Resource]] = {
    m.__name__: m for m in (FinOpsPolicy, GPUBudget, FinOpsException, GPUEquivalence)
}
