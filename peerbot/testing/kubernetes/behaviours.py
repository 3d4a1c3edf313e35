"""What each kind of object does beyond generic storage: defaults, validation, selectable fields, printing.

One :class:`Behaviour` per kind mirrors the relevant parts of the API server's registry strategies and
admission plugins (``pkg/registry/*/strategy.go``, ``pkg/apis/*/validation``, ServiceAccount and
NamespaceLifecycle admission) and of the server-side table printers that ``kubectl get`` shows. Only what
Peerbot's resources touch is modelled: Namespaces, Pods, Jobs, Events (both APIs), Secrets, ConfigMaps,
ServiceAccounts, CustomResourceDefinitions and custom resources.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from peerbot.testing.kubernetes import errors, names, timefmt, validation
from peerbot.testing.kubernetes.errors import FieldError
from peerbot.testing.kubernetes.resources import ResourceType

#: Secret and ConfigMap payloads are limited to 1 MiB (MaxSecretSize, the etcd request limit).
MAX_DATA_SIZE: Final = 1024 * 1024
#: Events: reason and action are limited to 128 characters, the note (message) to 1 kB.
EVENT_FIELD_LIMIT: Final = 128
EVENT_NOTE_LIMIT: Final = 1024
#: The Job controller's default pod-failure budget (JobSpec.backoffLimit default).
JOB_DEFAULT_BACKOFF_LIMIT: Final = 6
#: SetDefaults_PodSpec: terminationGracePeriodSeconds.
POD_DEFAULT_GRACE_SECONDS: Final = 30
#: The container field the kubelet fills from the termination-message file.
DEFAULT_TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"
#: Labels the Job controller (and the Job API's defaulting) put on a Job's pod template.
JOB_UID_LABEL: Final = "batch.kubernetes.io/controller-uid"
JOB_NAME_LABEL: Final = "batch.kubernetes.io/job-name"
LEGACY_JOB_UID_LABEL: Final = "controller-uid"
LEGACY_JOB_NAME_LABEL: Final = "job-name"
#: The label the NamespaceDefaultLabelName admission plugin puts on every namespace.
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
#: The finalizer the apiextensions server puts on CRDs: it deletes their custom resources first.
CRD_CLEANUP_FINALIZER: Final = "customresourcecleanup.apiextensions.k8s.io"
#: The field-selector error of built-in resources.
BUILTIN_FIELD_ERROR: Final = "field label not supported: {field}"


@dataclass
class Context:
    """What a behaviour may consult while preparing or validating one write."""

    now: datetime.datetime
    warnings: list[str] = field(default_factory=list)
    #: The ``fieldValidation`` of the request: Strict, Warn (the default) or Ignore.
    field_validation: str = "Warn"
    #: Look up another stored object: (resource name, namespace, name) -> object or None.
    lookup: Callable[[str, str | None, str], dict[str, Any] | None] = lambda *_: None


def column(
    name: str, kind: str = "string", *, fmt: str = "", description: str = "", priority: int = 0
) -> dict[str, Any]:
    """A ``TableColumnDefinition``."""
    return {"name": name, "type": kind, "format": fmt, "description": description, "priority": priority}


NAME_COLUMN: Final = column(
    "Name",
    fmt="name",
    description=(
        "Name must be unique within a namespace. Is required when creating resources, although some "
        "resources "
        "may allow a client to request the generation of an appropriate name automatically. Name is "
        "primarily "
        "intended for creation idempotence and configuration definition. Cannot be updated. More info: "
        "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
    ),
)
AGE_COLUMN: Final = column(
    "Age",
    description=(
        "CreationTimestamp is a timestamp representing the server time when this object was created. "
        "It is not guaranteed to be set in happens-before order across separate operations."
    ),
)


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _age(obj: Mapping[str, Any], now: datetime.datetime) -> str:
    return timefmt.age(_meta(obj).get("creationTimestamp"), now)


class Behaviour:
    """The generic behaviour: plain storage, ``Name``/``Created At`` columns."""

    field_selector_error: str = BUILTIN_FIELD_ERROR

    def to_served(self, resource: ResourceType, stored: Mapping[str, Any]) -> dict[str, Any]:
        """The stored object as this resource version shows it."""
        obj = copy.deepcopy(dict(stored))
        obj["apiVersion"] = resource.api_version
        obj["kind"] = resource.kind
        return obj

    def to_storage(self, resource: ResourceType, served: Mapping[str, Any]) -> dict[str, Any]:
        """An object written through this resource version, as it is stored."""
        obj = copy.deepcopy(dict(served))
        obj["apiVersion"] = _storage_api_version(resource)
        obj["kind"] = resource.kind
        return obj

    def prepare_create(self, resource: ResourceType, obj: dict[str, Any], ctx: Context) -> None:
        """Defaults and server-set fields on create (PrepareForCreate + defaulting + mutating admission)."""

    def prepare_update(
        self, resource: ResourceType, new: dict[str, Any], old: Mapping[str, Any], ctx: Context
    ) -> None:
        """Server-side adjustments on update (PrepareForUpdate + defaulting)."""

    def validate(
        self, resource: ResourceType, obj: Mapping[str, Any], old: Mapping[str, Any] | None, ctx: Context
    ) -> list[FieldError]:
        """Validation beyond metadata (``old`` is None on create)."""
        return []

    def fields(self, obj: Mapping[str, Any]) -> dict[str, str]:
        """Selectable fields beyond ``metadata.name`` and ``metadata.namespace``."""
        return {}

    def columns(self, resource: ResourceType) -> list[dict[str, Any]]:
        """The table columns ``kubectl get`` shows."""
        return [NAME_COLUMN, column("Created At", "date", description=AGE_COLUMN["description"])]

    def cells(self, resource: ResourceType, obj: Mapping[str, Any], now: datetime.datetime) -> list[Any]:
        """One table row for ``obj`` (in the served version)."""
        return [_meta(obj).get("name"), _meta(obj).get("creationTimestamp")]


def _storage_api_version(resource: ResourceType) -> str:
    storage = resource.storage
    return f"{storage.group}/{storage.version}" if storage.group else str(storage.version)


# --- Namespaces -------------------------------------------------------------------------------------------


class NamespaceBehaviour(Behaviour):
    """Namespaces: the ``kubernetes`` finalizer, phase Active/Terminating, the metadata.name label."""

    def prepare_create(self, resource: ResourceType, obj: dict[str, Any], ctx: Context) -> None:
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
        _meta(obj).setdefault("labels", {})[NAMESPACE_NAME_LABEL] = _meta(obj)["name"]

    def prepare_update(
        self, resource: ResourceType, new: dict[str, Any], old: Mapping[str, Any], ctx: Context
    ) -> None:
        new.setdefault("metadata", {}).setdefault("labels", {})[NAMESPACE_NAME_LABEL] = _meta(old)["name"]
        new["spec"] = copy.deepcopy(old.get("spec", {}))

    def fields(self, obj: Mapping[str, Any]) -> dict[str, str]:
        return {"status.phase": str((obj.get("status") or {}).get("phase", ""))}

    def columns(self, resource: ResourceType) -> list[dict[str, Any]]:
        return [NAME_COLUMN, column("Status", description="The status of the namespace"), AGE_COLUMN]

    def cells(self, resource: ResourceType, obj: Mapping[str, Any], now: datetime.datetime) -> list[Any]:
        return [_meta(obj).get("name"), (obj.get("status") or {}).get("phase", ""), _age(obj, now)]


# --- Pods and pod templates -------------------------------------------------------------------------------


def _image_pull_policy(image: str) -> str:
    tag = image.rsplit("/", 1)[-1]
    if "@" in tag:
        return "IfNotPresent"
    return "Always" if ":" not in tag or tag.endswith(":latest") else "IfNotPresent"


def default_pod_spec(spec: dict[str, Any]) -> None:
    """``SetDefaults_PodSpec`` and ``SetDefaults_Container`` for the fields a reader would notice."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("terminationGracePeriodSeconds", POD_DEFAULT_GRACE_SECONDS)
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            if not isinstance(container, dict):
                continue
            container.setdefault("terminationMessagePath", DEFAULT_TERMINATION_MESSAGE_PATH)
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("imagePullPolicy", _image_pull_policy(str(container.get("image", ""))))
            container.setdefault("resources", {})


def validate_pod_spec(spec: Any, path: str, *, restart_policies: tuple[str, ...]) -> list[FieldError]:
    """``ValidatePodSpec`` for containers, restart policy, deadlines and environment."""
    if not isinstance(spec, Mapping):
        return [errors.required(path)]
    problems: list[FieldError] = []
    containers = spec.get("containers")
    if not containers:
        problems.append(errors.required(f"{path}.containers"))
    seen: set[str] = set()
    for key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(key) or []):
            where = f"{path}.{key}[{index}]"
            if not isinstance(container, Mapping):
                problems.append(errors.invalid(where, container, "must be an object"))
                continue
            name = container.get("name")
            if not name:
                problems.append(errors.required(f"{where}.name"))
            else:
                problems.extend(
                    errors.invalid(f"{where}.name", name, msg) for msg in names.dns1123_label(str(name))
                )
                if name in seen:
                    problems.append(errors.FieldError(errors.DUPLICATE, f"{where}.name", name))
                seen.add(str(name))
            if not container.get("image"):
                problems.append(errors.required(f"{where}.image"))
            for env_index, env in enumerate(container.get("env") or []):
                env_name = str((env or {}).get("name", ""))
                if not env_name:
                    problems.append(errors.required(f"{where}.env[{env_index}].name"))
                else:
                    problems.extend(
                        errors.invalid(f"{where}.env[{env_index}].name", env_name, msg)
                        for msg in names.env_var_name(env_name)
                    )
                if "value" in (env or {}) and "valueFrom" in (env or {}):
                    problems.append(
                        errors.invalid(
                            f"{where}.env[{env_index}].valueFrom",
                            "",
                            "may not be specified when `value` is not empty",
                        )
                    )
            policy = container.get("terminationMessagePolicy", "File")
            if policy not in {"File", "FallbackToLogsOnError"}:
                problems.append(
                    errors.not_supported(
                        f"{where}.terminationMessagePolicy", policy, ["File", "FallbackToLogsOnError"]
                    )
                )
    policy = spec.get("restartPolicy")
    if policy not in restart_policies:
        problems.append(errors.not_supported(f"{path}.restartPolicy", policy, restart_policies))
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and (not isinstance(deadline, int) or deadline < 1):
        problems.append(
            errors.invalid(
                f"{path}.activeDeadlineSeconds", deadline, "must be between 1 and 2147483647, inclusive"
            )
        )
    if spec.get("automountServiceAccountToken") not in {None, True, False}:
        problems.append(
            errors.invalid(
                f"{path}.automountServiceAccountToken",
                spec["automountServiceAccountToken"],
                "must be a boolean",
            )
        )
    return problems


def _qos_class(spec: Mapping[str, Any]) -> str:
    containers = list(spec.get("containers") or [])
    resources = [
        container.get("resources") or {} for container in containers if isinstance(container, Mapping)
    ]
    if not any(item.get("requests") or item.get("limits") for item in resources):
        return "BestEffort"
    guaranteed = all(
        (item.get("limits") or {}).get(name)
        and (item.get("requests") or item.get("limits") or {}).get(name)
        == (item.get("limits") or {}).get(name)
        for item in resources
        for name in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


_POD_MUTABLE_MESSAGE: Final = (
    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,"
    "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
)


class PodBehaviour(Behaviour):
    """Pods: defaults, ServiceAccount admission, Pending status, mostly-immutable spec, pod columns."""

    def prepare_create(self, resource: ResourceType, obj: dict[str, Any], ctx: Context) -> None:
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            return
        default_pod_spec(spec)
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = spec["serviceAccount"] = account
        namespace = _meta(obj).get("namespace")
        if ctx.lookup("serviceaccounts", namespace, account) is None:
            raise errors.forbidden_request(
                "",
                "pods",
                str(_meta(obj).get("name", "")),
                f"error looking up service account {namespace}/{account}: serviceaccount "
                f"{json.dumps(account)} not found",
            )
        obj["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}

    def validate(
        self, resource: ResourceType, obj: Mapping[str, Any], old: Mapping[str, Any] | None, ctx: Context
    ) -> list[FieldError]:
        problems = validate_pod_spec(
            obj.get("spec"), "spec", restart_policies=("Always", "OnFailure", "Never")
        )
        if old is not None and not problems:
            problems.extend(self._validate_spec_change(obj.get("spec") or {}, old.get("spec") or {}))
        return problems

    @staticmethod
    def _validate_spec_change(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[FieldError]:
        comparable_new = copy.deepcopy(dict(new))
        comparable_old = copy.deepcopy(dict(old))
        for spec in (comparable_new, comparable_old):
            spec.pop("activeDeadlineSeconds", None)
            spec.pop("tolerations", None)
            for key in ("containers", "initContainers"):
                for container in spec.get(key) or []:
                    container.pop("image", None)
        if comparable_new != comparable_old:
            return [errors.forbidden("spec", _POD_MUTABLE_MESSAGE)]
        return []

    def fields(self, obj: Mapping[str, Any]) -> dict[str, str]:
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        return {
            "spec.nodeName": str(spec.get("nodeName", "")),
            "spec.restartPolicy": str(spec.get("restartPolicy", "")),
            "spec.schedulerName": str(spec.get("schedulerName", "")),
            "spec.serviceAccountName": str(spec.get("serviceAccountName", "")),
            "spec.hostNetwork": "true" if spec.get("hostNetwork") else "false",
            "status.phase": str(status.get("phase", "")),
            "status.podIP": str(status.get("podIP", "")),
            "status.nominatedNodeName": str(status.get("nominatedNodeName", "")),
        }

    def columns(self, resource: ResourceType) -> list[dict[str, Any]]:
        return [
            NAME_COLUMN,
            column("Ready", description="The aggregate readiness state of this pod for accepting traffic."),
            column("Status", description="The aggregate status of the containers in this pod."),
            column(
                "Restarts", description="The number of times the containers in this pod have been restarted."
            ),
            AGE_COLUMN,
        ]

    def cells(self, resource: ResourceType, obj: Mapping[str, Any], now: datetime.datetime) -> list[Any]:
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        statuses = status.get("containerStatuses") or []
        ready = sum(1 for item in statuses if item.get("ready"))
        reason = status.get("reason") or status.get("phase") or "Unknown"
        for item in statuses:
            state = item.get("state") or {}
            if (state.get("waiting") or {}).get("reason"):
                reason = state["waiting"]["reason"]
            elif state.get("terminated"):
                terminated = state["terminated"]
                reason = terminated.get("reason") or f"ExitCode:{terminated.get('exitCode', 0)}"
        if _meta(obj).get("deletionTimestamp"):
            reason = "Terminating"
        restarts = sum(int(item.get("restartCount", 0)) for item in statuses)
        return [
            _meta(obj).get("name"),
            f"{ready}/{len(spec.get('containers') or [])}",
            reason,
            restarts,
            _age(obj, now),
        ]


# --- Jobs -------------------------------------------------------------------------------------------------


def _condition(status: Mapping[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in status.get("conditions") or [])


class JobBehaviour(Behaviour):
    """batch/v1 Jobs: defaults, controller-uid selector and labels, immutable template, job columns."""

    def prepare_create(self, resource: ResourceType, obj: dict[str, Any], ctx: Context) -> None:
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            return
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", JOB_DEFAULT_BACKOFF_LIMIT)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        meta = _meta(obj)
        uid, name = meta["uid"], meta["name"]
        template = spec.setdefault("template", {})
        if isinstance(template, dict):
            labels = template.setdefault("metadata", {}).setdefault("labels", {})
            if not spec.get("manualSelector"):
                labels.update(
                    {
                        JOB_UID_LABEL: uid,
                        JOB_NAME_LABEL: name,
                        LEGACY_JOB_UID_LABEL: uid,
                        LEGACY_JOB_NAME_LABEL: name,
                    }
                )
                spec["selector"] = {"matchLabels": {JOB_UID_LABEL: uid}}
            if isinstance(template.get("spec"), dict):
                default_pod_spec(template["spec"])

    def prepare_update(
        self, resource: ResourceType, new: dict[str, Any], old: Mapping[str, Any], ctx: Context
    ) -> None:
        template = (new.get("spec") or {}).get("template")
        if isinstance(template, dict) and isinstance(template.get("spec"), dict):
            default_pod_spec(template["spec"])

    def validate(
        self, resource: ResourceType, obj: Mapping[str, Any], old: Mapping[str, Any] | None, ctx: Context
    ) -> list[FieldError]:
        problems: list[FieldError] = []
        name = str(_meta(obj).get("name", ""))
        if len(name) > names.LABEL_VALUE_MAX:
            problems.append(
                errors.invalid(
                    "metadata.name", name, f"must be no more than {names.LABEL_VALUE_MAX} characters"
                )
            )
        spec = obj.get("spec")
        if not isinstance(spec, Mapping):
            return [*problems, errors.required("spec")]
        template = spec.get("template")
        if not isinstance(template, Mapping):
            problems.append(errors.required("spec.template"))
        else:
            problems.extend(
                validate_pod_spec(
                    template.get("spec"), "spec.template.spec", restart_policies=("OnFailure", "Never")
                )
            )
        for key in ("parallelism", "completions", "backoffLimit", "ttlSecondsAfterFinished"):
            value = spec.get(key)
            if value is not None and (not isinstance(value, int) or value < 0):
                problems.append(errors.invalid(f"spec.{key}", value, "must be greater than or equal to 0"))
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
            problems.append(errors.invalid("spec.activeDeadlineSeconds", deadline, "must be greater than 0"))
        if old is not None:
            old_spec = old.get("spec") or {}
            for key in ("template", "selector", "completionMode"):
                if spec.get(key) != old_spec.get(key):
                    problems.append(errors.immutable(f"spec.{key}", spec.get(key)))
        return problems

    def fields(self, obj: Mapping[str, Any]) -> dict[str, str]:
        return {"status.successful": str((obj.get("status") or {}).get("succeeded", 0))}

    def columns(self, resource: ResourceType) -> list[dict[str, Any]]:
        return [
            NAME_COLUMN,
            column("Status", description="Status of the job."),
            column("Completions", description="The completion status of the job."),
            column("Duration", description="Time required to complete the job."),
            AGE_COLUMN,
        ]

    def cells(self, resource: ResourceType, obj: Mapping[str, Any], now: datetime.datetime) -> list[Any]:
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        if _condition(status, "Complete"):
            state = "Complete"
        elif _condition(status, "Failed"):
            state = "Failed"
        elif _meta(obj).get("deletionTimestamp"):
            state = "Terminating"
        elif _condition(status, "FailureTarget"):
            state = "FailureTarget"
        elif _condition(status, "SuccessCriteriaMet"):
            state = "SuccessCriteriaMet"
        elif _condition(status, "Suspended"):
            state = "Suspended"
        else:
            state = "Running"
        completions = f"{status.get('succeeded', 0)}/{spec.get('completions', 1)}"
        started = timefmt.parse(status.get("startTime", ""))
        finished = timefmt.parse(status.get("completionTime", "")) or now
        duration = timefmt.human_duration((finished - started).total_seconds()) if started else ""
        return [_meta(obj).get("name"), state, completions, duration, _age(obj, now)]


# --- Events -----------------------------------------------------------------------------------------------

#: core/v1 Event field <-> events.k8s.io/v1 Event field, as the API server converts them.
_EVENT_FIELD_MAP: Final = {
    "involvedObject": "regarding",
    "message": "note",
    "reportingComponent": "reportingController",
    "source": "deprecatedSource",
    "firstTimestamp": "deprecatedFirstTimestamp",
    "lastTimestamp": "deprecatedLastTimestamp",
    "count": "deprecatedCount",
}
_REPORTING_CONTROLLER_RE: Final = re.compile(
    r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9](/[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


class EventBehaviour(Behaviour):
    """core/v1 Events (the storage form): the legacy and the events.k8s.io validation, event columns."""

    def to_served(self, resource: ResourceType, stored: Mapping[str, Any]) -> dict[str, Any]:
        obj = super().to_served(resource, stored)
        if resource.group == "events.k8s.io":
            for old, new in _EVENT_FIELD_MAP.items():
                if old in obj:
                    obj[new] = obj.pop(old)
        return obj

    def to_storage(self, resource: ResourceType, served: Mapping[str, Any]) -> dict[str, Any]:
        obj = super().to_storage(resource, served)
        if resource.group == "events.k8s.io":
            for old, new in _EVENT_FIELD_MAP.items():
                if new in obj:
                    obj[old] = obj.pop(new)
        return obj

    def prepare_create(self, resource: ResourceType, obj: dict[str, Any], ctx: Context) -> None:
        for key in ("firstTimestamp", "lastTimestamp"):
            moment = timefmt.parse(obj.get(key) or "")
            if moment is not None:
                obj[key] = timefmt.rfc3339(moment)
        moment = timefmt.parse(obj.get("eventTime") or "")
        if moment is not None:
            obj["eventTime"] = timefmt.rfc3339_micro(moment)

    def validate(
        self, resource: ResourceType, obj: Mapping[str, Any], old: Mapping[str, Any] | None, ctx: Context
    ) -> list[FieldError]:
        problems: list[FieldError] = []
        namespace = _meta(obj).get("namespace", "")
        involved = obj.get("involvedObject") or {}
        controller_field = (
            "reportingController" if resource.group == "events.k8s.io" else "reportingComponent"
        )
        if not obj.get("eventTime"):
            if involved.get("namespace", "") == "":
                if namespace not in {"", "default"}:
                    problems.append(
                        errors.invalid("involvedObject.namespace", "", "does not match event.namespace")
                    )
            elif involved.get("namespace") != namespace:
                problems.append(
                    errors.invalid(
                        "involvedObject.namespace",
                        involved.get("namespace"),
                        "does not match event.namespace",
                    )
                )
        else:
            if not involved.get("namespace") and namespace not in {"default", "kube-system"}:
                problems.append(
                    errors.invalid("involvedObject.namespace", "", "does not match event.namespace")
                )
            controller = str(obj.get("reportingComponent") or "")
            if not controller:
                problems.append(errors.required(controller_field))
            elif not _REPORTING_CONTROLLER_RE.match(controller):
                problems.append(errors.invalid(controller_field, controller, "must be a qualified name"))
            if not obj.get("reportingInstance"):
                problems.append(errors.required("reportingInstance"))
            elif len(str(obj["reportingInstance"])) > EVENT_FIELD_LIMIT:
                problems.append(
                    errors.invalid(
                        "reportingInstance", "", f"can have at most {EVENT_FIELD_LIMIT} characters"
                    )
                )
            for key in ("action", "reason"):
                if not obj.get(key):
                    problems.append(errors.required(key))
                elif len(str(obj[key])) > EVENT_FIELD_LIMIT:
                    problems.append(
                        errors.invalid(key, "", f"can have at most {EVENT_FIELD_LIMIT} characters")
                    )
            if len(str(obj.get("message") or "")) > EVENT_NOTE_LIMIT:
                where = "note" if resource.group == "events.k8s.io" else "message"
                problems.append(errors.invalid(where, "", f"can have at most {EVENT_NOTE_LIMIT} characters"))
        if resource.group == "events.k8s.io" and old is None:
            if not obj.get("eventTime"):
                problems.append(errors.required("eventTime"))
            if obj.get("type") not in {"Normal", "Warning"}:
                problems.append(errors.invalid("type", "", f"has invalid value: {obj.get('type', '')}"))
            for key in ("firstTimestamp", "lastTimestamp"):
                if obj.get(key):
                    problems.append(errors.invalid(_EVENT_FIELD_MAP[key], "", "needs to be unset"))
        return problems

    def fields(self, obj: Mapping[str, Any]) -> dict[str, str]:
        involved = obj.get("involvedObject") or {}
        result = {
            f"involvedObject.{key}": str(involved.get(key, ""))
            for key in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
        }
        result.update(
            {
                "reason": str(obj.get("reason", "")),
                "reportingComponent": str(obj.get("reportingComponent", "")),
                "source": str((obj.get("source") or {}).get("component", "")),
                "type": str(obj.get("type", "")),
            }
        )
        return result

    def columns(self, resource: ResourceType) -> list[dict[str, Any]]:
        return [
            column("Last Seen", description="Time when this event was last observed."),
            column("Type", description="Type of this event (Normal, Warning)."),
            column("Reason", description="This should be a short, machine understandable string."),
            column("Object", description="The object that this event is about."),
            column("Message", description="A human-readable description of the status of this operation."),
        ]

    def cells(self, resource: ResourceType, obj: Mapping[str, Any], now: datetime.datetime) -> list[Any]:
        stored = self.to_storage(resource, obj) if resource.group == "events.k8s.io" else obj
        involved = stored.get("involvedObject") or {}
        last = (
            stored.get("lastTimestamp") or stored.get("eventTime") or _meta(stored).get("creationTimestamp")
        )
        return [
            timefmt.age(last, now),
            stored.get("type", ""),
            stored.get("reason", ""),
            f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
            stored.get("message", ""),
        ]


# --- Secrets, ConfigMaps, ServiceAccounts ------------------------------------------------------------------


def _decode_base64_map(kind: str, data: Any) -> int:
    """Check base64 values (a 400 as the JSON decoder gives) and return the decoded size."""
    if data is None:
        return 0
    if not isinstance(data, Mapping):
        raise errors.bad_request(f'{kind} in version "v1" cannot be handled as a {kind}: data must be a map')
    size = 0
    for value in data.values():
        try:
            size += len(base64.b64decode(str(value), validate=True))
        except (binascii.Error, ValueError) as e:
            raise errors.bad_request(
                f'{kind} in version "v1" cannot be handled as a {kind}: illegal base64 data: {e}'
            ) from e
    return size


def _validate_keys(where: str, data: Any) -> list[FieldError]:
    problems: list[FieldError] = []
    for key in (data or {}) if isinstance(data, Mapping) else ():
        problems.extend(errors.invalid(f"{where}[{key}]", key, msg) for msg in names.config_key(str(key)))
    return problems


def _validate_immutable_data(
    obj: Mapping[str, Any], old: Mapping[str, Any] | None, keys: tuple[str, ...]
) -> list[FieldError]:
    if old is None or not old.get("immutable"):
        return []
    problems: list[FieldError] = []
    if obj.get("immutable") is not True:
        problems.append(errors.forbidden("immutable", "field is immutable when `immutable` is set"))
    for key in keys:
        if obj.get(key) != old.get(key):
            problems.append(errors.forbidden(key, "field is immutable when `immutable` is set"))
    return problems


#: Keys a Secret of a given type must carry (ValidateSecret).
_SECRET_REQUIRED_KEYS: Final = {
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    "kubernetes.io/dockercfg": (".dockercfg",),
}


class SecretBehaviour(Behaviour):
    """Secrets: ``stringData`` folded into base64 ``data``, key and size limits, immutability."""

    def _fold(self, obj: dict[str, Any]) -> None:
        string_data = obj.pop("stringData", None) or {}
        _decode_base64_map("Secret", obj.get("data"))
        if string_data:
            data = obj.setdefault("data", {}) or {}
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            obj["data"] = data
        obj.setdefault("type", "Opaque")

    def prepare_create(self, resource: ResourceType, obj: dict[str, Any], ctx: Context) -> None:
        self._fold(obj)

    def prepare_update(
        self, resource: ResourceType, new: dict[str, Any], old: Mapping[str, Any], ctx: Context
    ) -> None:
        self._fold(new)

    def validate(
        self, resource: ResourceType, obj: Mapping[str, Any], old: Mapping[str, Any] | None, ctx: Context
    ) -> list[FieldError]:
        problems = _validate_keys("data", obj.get("data"))
        if _decode_base64_map("Secret", obj.get("data")) > MAX_DATA_SIZE:
            problems.append(errors.too_long("data", MAX_DATA_SIZE))
        for key in _SECRET_REQUIRED_KEYS.get(str(obj.get("type")), ()):
            if key not in (obj.get("data") or {}):
                problems.append(errors.required(f"data[{key}]"))
        if old is not None and obj.get("type") != old.get("type"):
            problems.append(errors.immutable("type", obj.get("type")))
        return problems + _validate_immutable_data(obj, old, ("data",))

    def fields(self, obj: Mapping[str, Any]) -> dict[str, str]:
        return {"type": str(obj.get("type", ""))}

    def columns(self, resource: ResourceType) -> list[dict[str, Any]]:
        return [
            NAME_COLUMN,
            column("Type", description="The type of the secret"),
            column("Data", "integer", description="The number of entries in the secret"),
            AGE_COLUMN,
        ]

    def cells(self, resource: ResourceType, obj: Mapping[str, Any], now: datetime.datetime) -> list[Any]:
        return [_meta(obj).get("name"), obj.get("type", ""), len(obj.get("data") or {}), _age(obj, now)]


class ConfigMapBehaviour(Behaviour):
    """ConfigMaps: key rules, size limit, immutability."""

    def validate(
        self, resource: ResourceType, obj: Mapping[str, Any], old: Mapping[str, Any] | None, ctx: Context
    ) -> list[FieldError]:
        problems = _validate_keys("data", obj.get("data")) + _validate_keys(
            "binaryData", obj.get("binaryData")
        )
        size = sum(len(str(v).encode()) for v in (obj.get("data") or {}).values())
        size += _decode_base64_map("ConfigMap", obj.get("binaryData"))
        if size > MAX_DATA_SIZE:
            problems.append(errors.too_long("data", MAX_DATA_SIZE))
        return problems + _validate_immutable_data(obj, old, ("data", "binaryData"))

    def columns(self, resource: ResourceType) -> list[dict[str, Any]]:
        return [NAME_COLUMN, column("Data", "integer", description="Number of data entries"), AGE_COLUMN]

    def cells(self, resource: ResourceType, obj: Mapping[str, Any], now: datetime.datetime) -> list[Any]:
        count = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
        return [_meta(obj).get("name"), count, _age(obj, now)]


class ServiceAccountBehaviour(Behaviour):
    """ServiceAccounts: the SECRETS column."""

    def columns(self, resource: ResourceType) -> list[dict[str, Any]]:
        return [NAME_COLUMN, column("Secrets", "integer", description="Number of secrets"), AGE_COLUMN]

    def cells(self, resource: ResourceType, obj: Mapping[str, Any], now: datetime.datetime) -> list[Any]:
        return [_meta(obj).get("name"), len(obj.get("secrets") or []), _age(obj, now)]


# --- CustomResourceDefinitions and custom resources -------------------------------------------------------


class CustomResourceDefinitionBehaviour(Behaviour):
    """CRDs: the essential validation, defaulted names, and an accepted/established status."""

    def prepare_create(self, resource: ResourceType, obj: dict[str, Any], ctx: Context) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return
        crd_names = spec.setdefault("names", {})
        if isinstance(crd_names, dict) and crd_names.get("kind"):
            crd_names.setdefault("singular", str(crd_names["kind"]).lower())
            crd_names.setdefault("listKind", f"{crd_names['kind']}List")
        finalizers = _meta(obj).setdefault("finalizers", [])
        if CRD_CLEANUP_FINALIZER not in finalizers:
            finalizers.append(CRD_CLEANUP_FINALIZER)
        self._set_status(obj, ctx)

    def prepare_update(
        self, resource: ResourceType, new: dict[str, Any], old: Mapping[str, Any], ctx: Context
    ) -> None:
        spec = new.get("spec")
        crd_names = spec.get("names") if isinstance(spec, dict) else None
        if isinstance(crd_names, dict) and crd_names.get("kind"):
            crd_names.setdefault("singular", str(crd_names["kind"]).lower())
            crd_names.setdefault("listKind", f"{crd_names['kind']}List")
        self._set_status(new, ctx)

    @staticmethod
    def _set_status(obj: dict[str, Any], ctx: Context) -> None:
        spec = obj.get("spec") or {}
        when = timefmt.rfc3339(ctx.now)
        conditions = [
            {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": when}
            for kind, reason, message in (
                ("NamesAccepted", "NoConflicts", "no conflicts found"),
                ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            )
        ]
        stored = [
            v.get("name") for v in spec.get("versions") or [] if isinstance(v, Mapping) and v.get("storage")
        ]
        obj["status"] = {
            "acceptedNames": copy.deepcopy(spec.get("names") or {}),
            "conditions": conditions,
            "storedVersions": stored,
        }

    def validate(
        self, resource: ResourceType, obj: Mapping[str, Any], old: Mapping[str, Any] | None, ctx: Context
    ) -> list[FieldError]:
        problems: list[FieldError] = []
        spec = obj.get("spec")
        if not isinstance(spec, Mapping):
            return [errors.required("spec")]
        group = str(spec.get("group") or "")
        crd_names = spec.get("names") or {}
        plural = str(crd_names.get("plural") or "")
        if not group:
            problems.append(errors.required("spec.group"))
        elif "." not in group:
            problems.append(errors.invalid("spec.group", group, "should be a domain with at least one dot"))
        if not plural:
            problems.append(errors.required("spec.names.plural"))
        else:
            problems.extend(
                errors.invalid("spec.names.plural", plural, msg) for msg in names.dns1123_label(plural)
            )
        if not crd_names.get("kind"):
            problems.append(errors.required("spec.names.kind"))
        if _meta(obj).get("name") != f"{plural}.{group}":
            problems.append(
                errors.invalid(
                    "metadata.name", _meta(obj).get("name"), 'must be spec.names.plural+"."+spec.group'
                )
            )
        if spec.get("scope") not in {"Namespaced", "Cluster"}:
            problems.append(errors.not_supported("spec.scope", spec.get("scope"), ["Cluster", "Namespaced"]))
        versions = [v for v in spec.get("versions") or [] if isinstance(v, Mapping)]
        if not versions:
            problems.append(
                errors.invalid("spec.versions", [], "must have exactly one version marked as storage version")
            )
        elif sum(1 for v in versions if v.get("storage")) != 1:
            problems.append(
                errors.invalid(
                    "spec.versions", versions, "must have exactly one version marked as storage version"
                )
            )
        for index, version in enumerate(versions):
            if not version.get("name"):
                problems.append(errors.required(f"spec.versions[{index}].name"))
            if not (version.get("schema") or {}).get("openAPIV3Schema"):
                problems.append(
                    errors.required(f"spec.versions[{index}].schema.openAPIV3Schema", "schemas are required")
                )
        if old is not None:
            old_spec = old.get("spec") or {}
            if spec.get("scope") != old_spec.get("scope"):
                problems.append(errors.immutable("spec.scope", spec.get("scope")))
            if crd_names.get("plural") != (old_spec.get("names") or {}).get("plural"):
                problems.append(errors.immutable("spec.names.plural", crd_names.get("plural")))
        return problems

    def cells(self, resource: ResourceType, obj: Mapping[str, Any], now: datetime.datetime) -> list[Any]:
        return [_meta(obj).get("name"), _meta(obj).get("creationTimestamp")]


_PATH_STEP_RE: Final = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\?\(@\.([^=!]+)==[\"']([^\"']*)[\"']\)\]")


def json_path(obj: Any, path: str) -> Any:
    """Evaluate the simple JSONPath of a printer column (``.status.tokens.total``, ``.a[0].b``,
    ``.status.conditions[?(@.type=="Ready")].status``); None when a step is missing.
    """
    current = obj
    position = 0
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    while position < len(text):
        step = _PATH_STEP_RE.match(text, position)
        if step is None:
            return None
        position = step.end()
        key, index, filter_key, filter_value = step.groups()
        if key is not None:
            current = current.get(key) if isinstance(current, Mapping) else None
        elif index is not None:
            current = current[int(index)] if isinstance(current, list) and int(index) < len(current) else None
        else:
            matches = (
                [
                    item
                    for item in current or []
                    if isinstance(item, Mapping) and str(item.get(filter_key)) == filter_value
                ]
                if isinstance(current, list)
                else []
            )
            current = matches[0] if matches else None
        if current is None:
            return None
    return current


def _printer_cell(kind: str, value: Any, now: datetime.datetime) -> Any:
    """``cellForJSONValue`` of the apiextensions table convertor."""
    if value is None:
        return None
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        return value if isinstance(value, int | float) else json.dumps(value)
    if kind == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "date" and isinstance(value, str):
        moment = timefmt.parse(value)
        return "<invalid>" if moment is None else timefmt.human_duration((now - moment).total_seconds())
    return None


#: The column a CRD gets when it declares no additionalPrinterColumns.
_DEFAULT_CRD_COLUMNS: Final = ({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},)


class CustomResourceBehaviour(Behaviour):
    """Custom resources: schema pruning/defaulting/validation and the CRD's printer columns."""

    field_selector_error = (
        '"{field}" is not a known field selector: only "metadata.name", "metadata.namespace"'
    )

    def __init__(
        self,
        schema: Mapping[str, Any],
        printer_columns: tuple[Mapping[str, Any], ...],
        selectable: tuple[str, ...],
    ) -> None:
        self.validator = validation.SchemaValidator(schema)
        self.printer_columns = printer_columns or _DEFAULT_CRD_COLUMNS
        self.selectable = selectable

    def normalise(self, resource: ResourceType, obj: dict[str, Any], ctx: Context) -> dict[str, Any]:
        """Prune and default; unknown fields become warnings, or a 400 under fieldValidation=Strict."""
        pruned, unknown = self.validator.prune_and_default(obj)
        if unknown and ctx.field_validation == "Strict":
            raise errors.bad_request(
                validation.strict_decoding_message(resource.kind, resource.version, unknown)
            )
        if ctx.field_validation != "Ignore":
            ctx.warnings.extend(f'unknown field "{path}"' for path in unknown)
        return pruned

    def validate(
        self, resource: ResourceType, obj: Mapping[str, Any], old: Mapping[str, Any] | None, ctx: Context
    ) -> list[FieldError]:
        return self.validator.validate(obj)

    def fields(self, obj: Mapping[str, Any]) -> dict[str, str]:
        result: dict[str, str] = {}
        for path in self.selectable:
            value = json_path(obj, path)
            result[path.lstrip(".")] = (
                "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
            )
        return result

    def columns(self, resource: ResourceType) -> list[dict[str, Any]]:
        result = [NAME_COLUMN]
        for spec in self.printer_columns:
            path = str(spec.get("jsonPath", ""))
            description = (
                spec.get("description") or f"Custom resource definition column (in JSONPath format): {path}"
            )
            result.append(
                column(
                    str(spec.get("name")),
                    str(spec.get("type", "string")),
                    fmt=str(spec.get("format", "")),
                    description=description,
                    priority=int(spec.get("priority", 0)),
                )
            )
        return result

    def cells(self, resource: ResourceType, obj: Mapping[str, Any], now: datetime.datetime) -> list[Any]:
        cells: list[Any] = [_meta(obj).get("name")]
        for spec in self.printer_columns:
            cells.append(
                _printer_cell(
                    str(spec.get("type", "string")), json_path(obj, str(spec.get("jsonPath", ""))), now
                )
            )
        return cells
