"""Every document of deploy/k8s/ validated offline against a schema, so a misspelt field or a wrong
type fails `make test` instead of `kubectl apply`.

- Built-in kinds (Deployment, StatefulSet, Service, HPA, PDB, Ingress, NetworkPolicy, ...):
  kubernetes-validate's bundled OpenAPI-derived JSON schemas, strict (unknown fields rejected), at
  the oldest Kubernetes these manifests target (MIN_K8S) and at the newest the package ships, so a
  field that a later release removed is caught too.
- KEDA's ScaledObject and TriggerAuthentication (CRDs, which kubernetes-validate has no schema for):
  the JSON schemas below, written from KEDA 2.x's documented fields (keda.sh/docs: "ScaledObject
  specification", "Authentication", and the Redis Lists scaler's parameters), also strict. They
  cover the fields these manifests use and their documented neighbours, not the whole CRD; the
  scaler metadata is checked for the `redis` trigger, the only one used.
- The Kustomization is checked by test_k8s.py (its resources are exactly the files).

Nothing is fetched: the schemas ship with the package or live in this file."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

MIN_K8S = "1.30"
K8S_VERSIONS = (MIN_K8S, ".".join(latest_version().split(".")[:2]))
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
NOT_KUBERNETES = {"Kustomization"}  # kustomize's own file, never sent to the API server


def k8s_helpers():
    spec = importlib.util.spec_from_file_location(
        "_moodtunes_deploy_k8s", Path(__file__).with_name("test_k8s.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOCS = k8s_helpers().load_documents()


def doc_id(item) -> str:
    filename, doc = item
    return f"{filename}:{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '')}"


# ----------------------------------------------------------------------------- KEDA schemas

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "additionalProperties": False,
}
_HPA_RULES = {
    "type": "object",
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type", "value", "periodSeconds"],
                "properties": {
                    "type": {"enum": ["Pods", "Percent"]},
                    "value": {"type": "integer", "minimum": 1},
                    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
                },
                "additionalProperties": False,
            },
        },
        "tolerance": {"type": ["string", "number"]},
    },
    "additionalProperties": False,
}
_NUMERIC_STRING = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}
# The Redis Lists scaler (type: redis): its documented metadata parameters.
REDIS_TRIGGER_METADATA = {
    "type": "object",
    "required": ["listName"],
    "properties": {
        "address": {"type": "string", "pattern": r"^[^:/\s]+:[0-9]+$"},
        "addressFromEnv": {"type": "string"},
        "host": {"type": "string"},
        "hostFromEnv": {"type": "string"},
        "port": {"type": "string", "pattern": r"^[0-9]+$"},
        "portFromEnv": {"type": "string"},
        "usernameFromEnv": {"type": "string"},
        "passwordFromEnv": {"type": "string"},
        "listName": {"type": "string", "minLength": 1},
        "listLength": _NUMERIC_STRING,
        "activationListLength": _NUMERIC_STRING,
        "databaseIndex": {"type": "string", "pattern": r"^[0-9]+$"},
        "enableTLS": {"enum": ["true", "false"]},
        "unsafeSsl": {"enum": ["true", "false"]},
    },
    "additionalProperties": False,
    # Where to connect: an address, a host and port, or the environment of the target.
    "anyOf": [
        {"required": ["address"]},
        {"required": ["addressFromEnv"]},
        {"required": ["host", "port"]},
        {"required": ["hostFromEnv", "portFromEnv"]},
    ],
}
# Parameters a TriggerAuthentication may hand the redis scaler.
REDIS_AUTH_PARAMETERS = {
    "address",
    "host",
    "port",
    "username",
    "password",
    "tls",
    "ca",
    "cert",
    "key",
    "keyPassword",
}

SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
                "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "initialCooldownPeriod": _INT32,
                "idleReplicaCount": _INT32,
                "minReplicaCount": _INT32,
                "maxReplicaCount": _INT32,
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {
                        "failureThreshold": _INT32,
                        "replicas": _INT32,
                        "behavior": {
                            "enum": [
                                "static",
                                "currentReplicas",
                                "currentReplicasIfHigher",
                                "currentReplicasIfLower",
                            ]
                        },
                    },
                    "additionalProperties": False,
                },
                "advanced": {
                    "type": "object",
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {
                                    "type": "object",
                                    "properties": {"scaleUp": _HPA_RULES, "scaleDown": _HPA_RULES},
                                    "additionalProperties": False,
                                },
                            },
                            "additionalProperties": False,
                        },
                        "scalingModifiers": {
                            "type": "object",
                            "properties": {
                                "formula": {"type": "string"},
                                "target": {"type": "string"},
                                "activationTarget": {"type": "string"},
                                "metricType": {"enum": ["AverageValue", "Value"]},
                            },
                            "additionalProperties": False,
                        },
                    },
                    "additionalProperties": False,
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STRING_MAP,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {
                                        "enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]
                                    },
                                },
                                "additionalProperties": False,
                            },
                        },
                        "additionalProperties": False,
                        "if": {"properties": {"type": {"const": "redis"}}},
                        "then": {"properties": {"metadata": REDIS_TRIGGER_METADATA}},
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "minProperties": 1,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": {"type": "string"},
                            "key": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                },
                "configMapTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": {"type": "string"},
                            "key": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                },
                "env": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name"],
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": {"type": "string"},
                            "containerName": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                },
                # Provider-specific blocks, accepted as objects without further checks.
                "podIdentity": {"type": "object"},
                "hashiCorpVault": {"type": "object"},
                "azureKeyVault": {"type": "object"},
                "awsSecretManager": {"type": "object"},
                "gcpSecretManager": {"type": "object"},
                "boundServiceAccountToken": {"type": "array"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
KEDA_SCHEMAS = {"ScaledObject": SCALED_OBJECT, "TriggerAuthentication": TRIGGER_AUTHENTICATION}


def validate(doc: dict, version: str) -> None:
    """Raises when DOC does not validate (KEDA kinds against the schemas above)."""
    kind = doc.get("kind")
    if kind in KEDA_SCHEMAS:
        jsonschema.Draft202012Validator(KEDA_SCHEMAS[kind]).validate(doc)
        if kind == "ScaledObject":  # the HPA behaviour KEDA passes through: Kubernetes' own schema
            behavior = (
                doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
            )
            if behavior:
                kubernetes_validate.validate(
                    {
                        "apiVersion": "autoscaling/v2",
                        "kind": "HorizontalPodAutoscaler",
                        "metadata": {"name": doc["metadata"]["name"]},
                        "spec": {
                            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                            "maxReplicas": 1,
                            "behavior": behavior,
                        },
                    },
                    version,
                    strict=True,
                )
        return
    kubernetes_validate.validate(doc, version, strict=True)


# ----------------------------------------------------------------------------- the manifests


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", [d for d in DOCS if d[1].get("kind") not in NOT_KUBERNETES], ids=doc_id)
def test_manifest_validates(item, version):
    _, doc = item
    try:
        validate(doc, version)
    except kubernetes_validate.utils.SchemaNotFoundError as exc:
        pytest.fail(
            f"no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {version}: {exc.message}"
        )
    except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc_id(item)} invalid for Kubernetes {version} at {path or '<root>'}: {exc.message}")


def test_every_kind_has_a_schema():
    kinds = {doc.get("kind") for _, doc in DOCS} - NOT_KUBERNETES
    builtin = kinds - KEDA_KINDS
    assert builtin and KEDA_KINDS <= kinds


def test_keda_auth_parameters_are_the_redis_scalers():
    auths = {doc["metadata"]["name"]: doc for _, doc in DOCS if doc.get("kind") == "TriggerAuthentication"}
    for _, doc in DOCS:
        if doc.get("kind") != "ScaledObject":
            continue
        for trigger in doc["spec"]["triggers"]:
            ref = trigger.get("authenticationRef")
            if trigger["type"] == "redis" and ref:
                spec = auths[ref["name"]]["spec"]
                params = {r["parameter"] for r in spec.get("secretTargetRef", []) + spec.get("env", [])}
                assert params <= REDIS_AUTH_PARAMETERS, (
                    f"not redis scaler parameters: {params - REDIS_AUTH_PARAMETERS}"
                )


# ----------------------------------------------------------------------------- the validators catch errors


def first(kind: str, name: str | None = None) -> dict:
    return copy.deepcopy(
        next(d for _, d in DOCS if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name))
    )


def broken_documents():
    dep = first("Deployment", "fer-worker")
    dep["spec"]["template"]["spec"]["containers"][0]["resource"] = dep["spec"]["template"]["spec"][
        "containers"
    ][0].pop("resources")
    yield "misspelt container field", dep
    sts = first("StatefulSet", "postgres")
    sts["spec"]["replicas"] = "one"
    yield "wrong type", sts
    hpa = first("HorizontalPodAutoscaler")
    hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilisation"] = 70
    yield "misspelt HPA field", hpa
    so = first("ScaledObject", "fer-worker")
    del so["spec"]["scaleTargetRef"]
    yield "ScaledObject without target", so
    so = first("ScaledObject", "fer-worker")
    so["spec"]["triggers"][0]["metadata"]["listLenght"] = "5"
    yield "misspelt redis trigger parameter", so
    so = first("ScaledObject", "fer-worker")
    so["spec"]["triggers"][0]["metadata"]["listLength"] = 5
    yield "non-string trigger metadata", so
    so = first("ScaledObject", "fer-worker")
    so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]["policies"][0]["type"] = (
        "Nodes"
    )
    yield "invalid HPA behaviour in a ScaledObject", so
    auth = first("TriggerAuthentication")
    auth["spec"]["secretTargetRef"][0]["secret"] = auth["spec"]["secretTargetRef"][0].pop("name")
    yield "misspelt TriggerAuthentication field", auth


@pytest.mark.parametrize("what,doc", list(broken_documents()), ids=[w for w, _ in broken_documents()])
def test_validation_rejects(what, doc):
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(doc, MIN_K8S)


def test_an_unknown_builtin_api_version_is_an_error_not_a_skip():
    dep = first("Deployment", "gateway")
    dep["apiVersion"] = "apps/v1beta1"  # removed in Kubernetes 1.16
    with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
        validate(dep, MIN_K8S)
