"""Endpoints: deployed models with a traffic split, and predictions (`predict`, and
`rawPredict` with any body) proxied to the deployed model's local server, chosen by the
split, as Vertex does."""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import requests
from google.api import httpbody_pb2
from google.cloud import aiplatform_v1
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2, json_format

from localcloud.errors import LocalCloudError
from localcloud.vertex import filters, listing
from localcloud.vertex.jobs import validate_labels
from localcloud.vertex.models import ModelService
from localcloud.vertex.operations import OperationService
from localcloud.vertex.runtime import DeployedServer, ModelRuntime
from localcloud.vertex.state import EndpointPb, State
from localcloud.vertex.wire import (
    ApiError,
    invalid,
    new_id,
    not_found,
    now,
    parse,
    precondition,
)

LOG = logging.getLogger(__name__)

NEW_MODEL_KEY = "0"  # in DeployModelRequest.traffic_split: the model being deployed
PREDICT_TIMEOUT_SECONDS = 60.0
_ENDPOINT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# ListEndpoints: `endpoint` (the id) and display_name take = and !=, labels the map
# functions; order_by takes display_name, create_time, update_time.
FILTER_FIELDS: dict[str, filters.Field] = {
    "endpoint": filters.string(),
    "display_name": filters.string(),
    "labels": filters.LABELS,
    "create_time": filters.TIMESTAMP,
    "update_time": filters.TIMESTAMP,
}
SORT_KEYS: listing.SortKeys = {
    "display_name": lambda e: e.display_name,
    "create_time": lambda e: listing.time_key(e.create_time),
    "update_time": lambda e: listing.time_key(e.update_time),
}
_DEDICATED = aiplatform_v1.Model.DeploymentResourcesType.DEDICATED_RESOURCES
_UPDATABLE = {
    "traffic_split": "traffic_split",
    "trafficSplit": "traffic_split",
    "display_name": "display_name",
    "displayName": "display_name",
    "description": "description",
    "labels": "labels",
}


class EndpointService:
    def __init__(
        self,
        state: State,
        operations: OperationService,
        models: ModelService,
        runtime: ModelRuntime | None,
    ) -> None:
        self._state = state
        self._operations = operations
        self._models = models
        self._runtime = runtime
        self._servers: dict[str, DeployedServer] = {}  # deployed model id -> its server

    # -- endpoints -----------------------------------------------------------------------

    def create(
        self, project: str, location: str, query: Mapping[str, str], body: Any
    ) -> operations_pb2.Operation:
        endpoint = parse(body, EndpointPb(), "Endpoint")
        if not endpoint.display_name:
            raise invalid("Endpoint.display_name is required")
        validate_labels(endpoint.labels, "Endpoint")
        with self._state.lock:
            endpoint_id = self._new_endpoint_id(query.get("endpointId", ""))
            for output_only in ("deployed_models", "traffic_split", "etag"):
                endpoint.ClearField(output_only)
            endpoint.name = f"projects/{project}/locations/{location}/endpoints/{endpoint_id}"
            endpoint.create_time.CopyFrom(now())
            endpoint.update_time.CopyFrom(endpoint.create_time)
            self._state.endpoints[endpoint_id] = endpoint
            self._state.save()
            created = _copy(endpoint)
        return self._operations.finish(
            created.name, aiplatform_v1.CreateEndpointOperationMetadata.pb()(), created
        )

    def get(self, project: str, location: str, endpoint_id: str) -> Any:
        with self._state.lock:
            return _copy(self._find(project, location, endpoint_id))

    def list(self, project: str, location: str, query: Mapping[str, str]) -> Any:
        with self._state.lock:
            here = [
                _copy(endpoint)
                for endpoint in self._state.endpoints.values()
                if listing.in_location(endpoint.name, project, location)
            ]
        found = listing.select(here, query, FILTER_FIELDS, _endpoint_field)
        return listing.respond(
            found, query, aiplatform_v1.ListEndpointsResponse, "endpoints", sort_keys=SORT_KEYS
        )

    def update(
        self, project: str, location: str, endpoint_id: str, query: Mapping[str, str], body: Any
    ) -> Any:
        patch = parse(body, EndpointPb(), "Endpoint")
        paths = [path for path in query.get("updateMask", "").split(",") if path]
        if not paths:
            raise invalid("update_mask is required: name the fields to update")
        unknown = [path for path in paths if path not in _UPDATABLE]
        if unknown:
            raise invalid(
                f"update_mask names fields that cannot be updated here: {', '.join(unknown)}; "
                "supported: traffic_split, display_name, description, labels"
            )
        with self._state.lock:
            endpoint = self._find(project, location, endpoint_id)
            for field in {_UPDATABLE[path] for path in paths}:
                if field == "traffic_split":
                    deployed = [model.id for model in endpoint.deployed_models]
                    _check_split(dict(patch.traffic_split), deployed, "Endpoint.traffic_split")
                if field == "display_name" and not patch.display_name:
                    raise invalid("Endpoint.display_name cannot be empty")
                if field == "labels":
                    validate_labels(patch.labels, "Endpoint")
                endpoint.ClearField(field)
                _copy_field(patch, endpoint, field)
            endpoint.update_time.CopyFrom(now())
            self._state.save()
            return _copy(endpoint)

    def delete(self, project: str, location: str, endpoint_id: str) -> operations_pb2.Operation:
        with self._state.lock:
            endpoint = self._find(project, location, endpoint_id)
            if endpoint.deployed_models:
                raise precondition(
                    f"Endpoint {endpoint.name} still has deployed models: undeploy them first"
                )
            del self._state.endpoints[endpoint_id]
            self._state.save()
        return self._operations.finish(
            endpoint.name,
            aiplatform_v1.DeleteOperationMetadata.pb()(),
            empty_pb2.Empty(),
        )

    # -- deployments ---------------------------------------------------------------------

    def deploy_model(
        self, project: str, location: str, endpoint_id: str, body: Any
    ) -> operations_pb2.Operation:
        request = parse(body, aiplatform_v1.DeployModelRequest.pb()(), "DeployModelRequest")
        deployed = request.deployed_model
        if not deployed.model:
            raise invalid("DeployModelRequest.deployed_model.model is required")
        with self._state.lock:
            endpoint = self._find(project, location, endpoint_id)
            model = self._models.get(deployed.model)
            _check_resources(deployed, model)
            deployed_id = new_id(self._deployed_ids())
            split = self._split_after_deploy(endpoint, dict(request.traffic_split), deployed_id)
        deployed.id = deployed_id
        deployed.model = model.name
        deployed.model_version_id = model.version_id
        deployed.display_name = deployed.display_name or model.display_name
        deployed.create_time.CopyFrom(now())
        metadata = aiplatform_v1.DeployModelOperationMetadata.pb()()
        try:
            # Blocks until the serving container is healthy; outside the lock so other
            # requests (and predictions to other models) carry on meanwhile.
            self._start_server(deployed_id, model)
        except LocalCloudError as err:
            failure = ApiError("INTERNAL", f"Deploying {deployed.model} failed: {err}")
            return self._operations.finish(endpoint.name, metadata, error=failure)
        with self._state.lock:
            try:
                endpoint = self._find(project, location, endpoint_id)
                _check_split(
                    split, [*(m.id for m in endpoint.deployed_models), deployed_id], "traffic_split"
                )
            except ApiError as err:  # the endpoint changed while the model was starting
                self._stop_server(deployed_id)
                return self._operations.finish(endpoint.name, metadata, error=err)
            endpoint.deployed_models.append(deployed)
            _replace_split(endpoint, split)
            self._state.save()
        response = aiplatform_v1.DeployModelResponse.pb()()
        response.deployed_model.CopyFrom(deployed)
        return self._operations.finish(endpoint.name, metadata, response)

    def undeploy_model(
        self, project: str, location: str, endpoint_id: str, body: Any
    ) -> operations_pb2.Operation:
        request = parse(body, aiplatform_v1.UndeployModelRequest.pb()(), "UndeployModelRequest")
        with self._state.lock:
            endpoint = self._find(project, location, endpoint_id)
            remaining = [m for m in endpoint.deployed_models if m.id != request.deployed_model_id]
            if len(remaining) == len(endpoint.deployed_models):
                raise not_found(
                    f"DeployedModel {request.deployed_model_id!r} is not deployed to "
                    f"{endpoint.name}"
                )
            split = self._split_after_undeploy(
                endpoint, request.deployed_model_id, dict(request.traffic_split), remaining
            )
            del endpoint.deployed_models[:]
            endpoint.deployed_models.extend(remaining)
            _replace_split(endpoint, split)
            endpoint.update_time.CopyFrom(now())
            self._state.save()
            name = endpoint.name
        self._stop_server(request.deployed_model_id)
        return self._operations.finish(
            name,
            aiplatform_v1.UndeployModelOperationMetadata.pb()(),
            aiplatform_v1.UndeployModelResponse.pb()(),
        )

    def redeploy_all(self) -> None:
        """After a restart: start every deployed model's server again. A model that
        cannot start is logged and left without a server (its predictions fail)."""
        with self._state.lock:
            deployments = [
                (deployed.id, deployed.model, deployed.model_version_id)
                for endpoint in self._state.endpoints.values()
                for deployed in endpoint.deployed_models
            ]
        for deployed_id, model_name, version_id in deployments:
            try:
                model = self._models.get(f"{model_name}@{version_id}")
                self._start_server(deployed_id, model)
            except (LocalCloudError, ApiError) as err:
                LOG.warning(
                    "could not redeploy %s (%s@%s): %s", deployed_id, model_name, version_id, err
                )

    # -- predictions ---------------------------------------------------------------------

    def predict(self, project: str, location: str, endpoint_id: str, body: Any) -> Any:
        # Parsed for validation only; the container gets the JSON as the caller wrote it.
        parse(body, aiplatform_v1.PredictRequest.pb()(), "PredictRequest")
        deployed, server = self._route(project, location, endpoint_id)
        payload = {key: body[key] for key in ("instances", "parameters") if key in body}
        reply = _post(server, deployed.id, json.dumps(payload).encode(), "application/json")
        predictions = _predictions(reply, deployed.id)
        response = aiplatform_v1.PredictResponse.pb()(
            deployed_model_id=deployed.id,
            model=deployed.model,
            model_version_id=deployed.model_version_id,
            model_display_name=deployed.display_name,
        )
        try:
            json_format.ParseDict({"predictions": predictions}, response)
        except json_format.ParseError as err:
            raise ApiError(
                "INTERNAL", f"DeployedModel {deployed.id} answered unusable predictions: {err}"
            ) from err
        return response

    def raw_predict(self, project: str, location: str, endpoint_id: str, body: Any) -> Any:
        """RawPredict: the HttpBody goes to the serving container as it is, and its answer
        comes back as it is (content type included)."""
        request = parse(body, aiplatform_v1.RawPredictRequest.pb()(), "RawPredictRequest")
        http_body = request.http_body
        deployed, server = self._route(project, location, endpoint_id)
        reply = _post(
            server, deployed.id, http_body.data, http_body.content_type or "application/json"
        )
        return httpbody_pb2.HttpBody(
            content_type=reply.headers.get("Content-Type", "application/json"),
            data=reply.content,
        )

    def _route(self, project: str, location: str, endpoint_id: str) -> tuple[Any, DeployedServer]:
        """The deployed model the traffic split picks for one request, and its server."""
        with self._state.lock:
            endpoint = self._find(project, location, endpoint_id)
            deployed = _choose(endpoint)
            server = self._servers.get(deployed.id)
        if server is None:
            raise precondition(
                f"DeployedModel {deployed.id} on {endpoint.name} has no running server "
                "(no model runtime, or it failed to start): deploy it again"
            )
        return deployed, server

    def close(self) -> None:
        for deployed_id in list(self._servers):
            self._stop_server(deployed_id)

    # -- helpers -------------------------------------------------------------------------

    def _start_server(self, deployed_id: str, model: Any) -> None:
        if self._runtime is None:
            return  # recorded as deployed; predictions explain there is no runtime
        proto_model = aiplatform_v1.Model.deserialize(model.SerializeToString())
        server = self._runtime.deploy(deployed_id, proto_model)
        with self._state.lock:
            self._servers[deployed_id] = server

    def _stop_server(self, deployed_id: str) -> None:
        with self._state.lock:
            self._servers.pop(deployed_id, None)
        if self._runtime is None:
            return
        try:
            self._runtime.undeploy(deployed_id)
        except LocalCloudError as err:
            LOG.warning("could not stop deployed model %s: %s", deployed_id, err)

    def _split_after_deploy(
        self, endpoint: Any, requested: dict[str, int], deployed_id: str
    ) -> dict[str, int]:
        existing = [model.id for model in endpoint.deployed_models]
        if not requested:
            # Vertex: an empty split leaves the endpoint's as it is; a first model gets all.
            return {deployed_id: 100} if not existing else dict(endpoint.traffic_split)
        _check_split(requested, [NEW_MODEL_KEY, *existing], "DeployModelRequest.traffic_split")
        return {
            (deployed_id if key == NEW_MODEL_KEY else key): percent
            for key, percent in requested.items()
        }

    def _split_after_undeploy(
        self, endpoint: Any, deployed_id: str, requested: dict[str, int], remaining: Sequence[Any]
    ) -> dict[str, int]:
        ids = [model.id for model in remaining]
        if not ids:
            return {}
        if requested:
            _check_split(requested, ids, "UndeployModelRequest.traffic_split")
            return requested
        if endpoint.traffic_split.get(deployed_id, 0) > 0:
            raise precondition(
                f"DeployedModel {deployed_id} still receives "
                f"{endpoint.traffic_split[deployed_id]}% of {endpoint.name}'s traffic: pass a "
                "traffic_split for the remaining models"
            )
        return {key: value for key, value in endpoint.traffic_split.items() if key in ids}

    def _deployed_ids(self) -> set[str]:
        return {
            model.id
            for endpoint in self._state.endpoints.values()
            for model in endpoint.deployed_models
        }

    def _new_endpoint_id(self, wanted: str) -> str:
        if not wanted:
            return new_id(self._state.endpoints)
        if not _ENDPOINT_ID.fullmatch(wanted):
            raise invalid(
                f"endpoint_id {wanted!r} must be 1-63 lowercase letters, digits or dashes, "
                "not starting with a dash"
            )
        if wanted in self._state.endpoints:
            raise ApiError("ALREADY_EXISTS", f"Endpoint {wanted} already exists")
        return wanted

    def _find(self, project: str, location: str, endpoint_id: str) -> Any:
        endpoint = self._state.endpoints.get(endpoint_id)
        if endpoint is None or not listing.in_location(endpoint.name, project, location):
            raise not_found(
                f"Endpoint projects/{project}/locations/{location}/endpoints/{endpoint_id} "
                "not found"
            )
        return endpoint


def _check_split(split: Mapping[str, int], allowed_ids: list[str], what: str) -> None:
    unknown = sorted(set(split) - set(allowed_ids))
    if unknown:
        raise invalid(
            f"{what} names models that are not deployed: {', '.join(unknown)} "
            f"(deployed: {', '.join(i for i in allowed_ids if i != NEW_MODEL_KEY) or 'none'})"
        )
    if any(percent < 0 for percent in split.values()):
        raise invalid(f"{what} percentages must not be negative: {dict(split)}")
    total = sum(split.values())
    if total != 100:
        raise invalid(f"{what} percentages must sum to 100, got {total}: {dict(split)}")


def _replace_split(endpoint: Any, split: Mapping[str, int]) -> None:
    endpoint.traffic_split.clear()
    endpoint.traffic_split.update(split)
    endpoint.update_time.CopyFrom(now())


def _choose(endpoint: Any) -> Any:
    weighted = [
        (model, endpoint.traffic_split.get(model.id, 0)) for model in endpoint.deployed_models
    ]
    weighted = [(model, weight) for model, weight in weighted if weight > 0]
    if not weighted:
        raise precondition(
            f"Endpoint {endpoint.name} has no deployed model receiving traffic: deploy a model "
            "(or give one a share of the traffic split) first"
        )
    models, weights = zip(*weighted, strict=True)
    return random.choices(models, weights=weights)[0]


def _check_resources(deployed: Any, model: Any) -> None:
    """Vertex deploys a custom-container model on dedicated resources only, and refuses a
    DeployModel that does not give them."""
    supported = list(model.supported_deployment_resources_types) or [_DEDICATED]
    if deployed.WhichOneof("prediction_resources") != "dedicated_resources":
        raise invalid(
            f"DeployModelRequest.deployed_model.dedicated_resources is required: {model.name} "
            "supports only "
            + ", ".join(aiplatform_v1.Model.DeploymentResourcesType(t).name for t in supported)
        )
    resources = deployed.dedicated_resources
    if not resources.machine_spec.machine_type:
        raise invalid(
            "DeployModelRequest.deployed_model.dedicated_resources.machine_spec.machine_type "
            "is required"
        )
    if resources.min_replica_count < 1:
        raise invalid(
            "DeployModelRequest.deployed_model.dedicated_resources.min_replica_count must be "
            f"at least 1, got {resources.min_replica_count}"
        )
    if resources.max_replica_count and resources.max_replica_count < resources.min_replica_count:
        raise invalid(
            "DeployModelRequest.deployed_model.dedicated_resources.max_replica_count "
            f"({resources.max_replica_count}) is less than min_replica_count "
            f"({resources.min_replica_count})"
        )


def _post(server: DeployedServer, deployed_id: str, data: bytes, content_type: str) -> Any:
    """POST to the container's predict route; its refusals become Google's errors."""
    url = server.url.rstrip("/") + server.predict_route
    try:
        reply = requests.post(
            url,
            data=data,
            headers={"Content-Type": content_type},
            timeout=PREDICT_TIMEOUT_SECONDS,
        )
    except requests.RequestException as err:
        raise ApiError(
            "UNAVAILABLE", f"DeployedModel {deployed_id} did not answer at {url}: {err}"
        ) from err
    if 400 <= reply.status_code < 500:
        raise invalid(f"DeployedModel {deployed_id} refused the request: {_reason(reply)}")
    if reply.status_code >= 300:
        raise ApiError(
            "INTERNAL",
            f"DeployedModel {deployed_id} failed with HTTP {reply.status_code}: {_reason(reply)}",
        )
    return reply


def _predictions(reply: requests.Response, deployed_id: str) -> Any:
    try:
        predictions = reply.json()["predictions"]
    except (ValueError, KeyError, TypeError) as err:
        raise ApiError(
            "INTERNAL",
            f"DeployedModel {deployed_id} answered without a JSON 'predictions' list",
        ) from err
    return predictions


def _reason(reply: requests.Response) -> str:
    """The serving container's own message: `{"error": "..."}`, Google's error shape,
    or the body text."""
    try:
        data = reply.json()
    except ValueError:
        return reply.text.strip()[:2000] or f"HTTP {reply.status_code}"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    if error is not None:
        return str(error)
    return reply.text.strip()[:2000]


def _copy_field(source: Any, target: Any, field: str) -> None:
    if field == "traffic_split":
        target.traffic_split.update(source.traffic_split)
    elif field == "labels":
        target.labels.update(source.labels)
    else:
        setattr(target, field, getattr(source, field))


def _endpoint_field(endpoint: Any, name: str) -> Any:
    return endpoint.name.rsplit("/", 1)[1] if name == "endpoint" else getattr(endpoint, name)


def _copy(endpoint: Any) -> Any:
    clone = EndpointPb()
    clone.CopyFrom(endpoint)
    return clone
