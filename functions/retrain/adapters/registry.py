"""Vertex AI Model Registry and endpoints through the `aiplatform_v1` GAPIC clients,
imported on first use only.

Models and endpoints get fixed ids derived from the config (`model_id`, `endpoint_id`), so
two deliveries creating "the" model or endpoint at once end with one: the loser gets
ALREADY_EXISTS and uses the winner's. The gate metric travels with each version in
`Model.metadata` as `{"retrain": {"metric": NAME, "value": NUMBER}}` (labels cannot hold
a float)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from retrain.adapters.clients import VertexAdapter
from retrain.adapters.errors import translated
from retrain.ports import (
    Deployed,
    DeployFailed,
    EndpointState,
    ModelVersion,
    Prediction,
    VersionSpec,
)

CALL_TIMEOUT_S = 60.0
OPERATION_TIMEOUT_S = 1800.0  # deploying on Vertex AI takes minutes


class VertexRegistry(VertexAdapter):
    @property
    def client(self) -> Any:
        return self._vertex("ModelServiceClient")

    def _model(self, model_id: str) -> str:
        return f"{self._parent}/models/{model_id}"

    def find_version(self, model_id: str, labels: Mapping[str, str]) -> ModelVersion | None:
        from google.api_core.exceptions import NotFound

        query = " AND ".join(f'labels.{key}="{value}"' for key, value in sorted(labels.items()))
        with translated(f"list versions of {self._model(model_id)} where {query}"):
            try:
                pager = self.client.list_model_versions(
                    request={"name": self._model(model_id), "filter": query},
                    timeout=CALL_TIMEOUT_S,
                )
                found = [model_version(model) for model in pager]
            except NotFound:
                return None
        return min(found, key=lambda v: int(v.version_id)) if found else None

    def by_alias(self, model_id: str, alias: str) -> ModelVersion | None:
        from google.api_core.exceptions import NotFound

        name = f"{self._model(model_id)}@{alias}"
        with translated(f"get {name}"):
            try:
                return model_version(self.client.get_model(name=name, timeout=CALL_TIMEOUT_S))
            except NotFound:
                return None

    def upload(self, spec: VersionSpec) -> ModelVersion:
        from google.api_core.exceptions import AlreadyExists, NotFound

        name = self._model(spec.model_id)
        with translated(f"upload a version of {name}"):
            try:
                response = self._upload(spec, parent_model=name)
            except NotFound:
                try:  # the first run creates the model under its fixed id
                    response = self._upload(spec, model_id=spec.model_id)
                except AlreadyExists:  # created meanwhile by another pipeline's run
                    response = self._upload(spec, parent_model=name)
            return model_version(
                self.client.get_model(
                    name=f"{response.model}@{response.model_version_id}", timeout=CALL_TIMEOUT_S
                )
            )

    def _upload(self, spec: VersionSpec, **target: str) -> Any:
        from google.cloud import aiplatform_v1 as v1

        model = v1.Model(
            display_name=spec.display_name,
            description=spec.description,
            artifact_uri=spec.artifact_uri,
            labels=dict(spec.labels),
            metadata={"retrain": {"metric": spec.metric_name, "value": spec.metric_value}},
            container_spec=v1.ModelContainerSpec(
                image_uri=spec.image_uri,
                health_route=spec.health_route,
                predict_route=spec.predict_route,
                ports=[v1.Port(container_port=spec.port)],
            ),
        )
        operation = self.client.upload_model(
            request={"parent": self._parent, "model": model, **target}, timeout=CALL_TIMEOUT_S
        )
        return operation.result(timeout=OPERATION_TIMEOUT_S)

    def set_alias(self, version: ModelVersion, alias: str) -> None:
        with translated(f"give {version.name} the alias {alias}"):
            self.client.merge_version_aliases(
                name=version.name, version_aliases=[alias], timeout=CALL_TIMEOUT_S
            )


def model_version(model: Any) -> ModelVersion:
    from google.cloud import aiplatform_v1 as v1

    metadata = v1.Model.to_dict(model).get("metadata") or {}
    stored = metadata.get("retrain") if isinstance(metadata, dict) else None
    value = stored.get("value") if isinstance(stored, dict) else None
    return ModelVersion(
        model=model.name,
        version_id=model.version_id,
        labels=dict(model.labels),
        aliases=tuple(model.version_aliases),
        metric=float(value) if isinstance(value, int | float) else None,
        artifact_uri=model.artifact_uri,
    )


class VertexEndpoints(VertexAdapter):
    @property
    def client(self) -> Any:
        return self._vertex("EndpointServiceClient")

    @property
    def prediction(self) -> Any:
        return self._vertex("PredictionServiceClient")

    def ensure(self, endpoint_id: str, display_name: str) -> EndpointState:
        from google.api_core.exceptions import AlreadyExists, NotFound
        from google.cloud import aiplatform_v1 as v1

        name = f"{self._parent}/endpoints/{endpoint_id}"
        with translated(f"ensure endpoint {name}"):
            try:
                return self._get(name)
            except NotFound:
                pass
            try:
                operation = self.client.create_endpoint(
                    parent=self._parent,
                    endpoint=v1.Endpoint(display_name=display_name),
                    endpoint_id=endpoint_id,
                    timeout=CALL_TIMEOUT_S,
                )
                return endpoint_state(operation.result(timeout=OPERATION_TIMEOUT_S))
            except AlreadyExists:  # created meanwhile by another delivery
                return self._get(name)

    def get(self, name: str) -> EndpointState:
        with translated(f"get {name}"):
            return self._get(name)

    def _get(self, name: str) -> EndpointState:
        return endpoint_state(self.client.get_endpoint(name=name, timeout=CALL_TIMEOUT_S))

    def deploy(
        self,
        endpoint: str,
        version: ModelVersion,
        machine_type: str,
        traffic: Mapping[str, int],
        service_account: str | None = None,
    ) -> str:
        from google.api_core.exceptions import GoogleAPICallError
        from google.cloud import aiplatform_v1 as v1

        deployed = v1.DeployedModel(
            model=version.name,
            display_name=f"{version.model.rsplit('/', 1)[-1]}-v{version.version_id}",
            dedicated_resources=v1.DedicatedResources(
                machine_spec=v1.MachineSpec(machine_type=machine_type),
                min_replica_count=1,
                max_replica_count=1,
            ),
            service_account=service_account or "",
        )
        with translated(f"deploy {version.name} to {endpoint}"):
            operation = self.client.deploy_model(
                endpoint=endpoint,
                deployed_model=deployed,
                traffic_split=dict(traffic),
                timeout=CALL_TIMEOUT_S,
            )
            try:
                response = operation.result(timeout=OPERATION_TIMEOUT_S)
            except GoogleAPICallError as err:
                failure = operation.operation.error
                if operation.done() and failure.code:
                    # The operation itself failed: the model never became healthy.
                    raise DeployFailed(failure.message or str(err)) from err
                raise
            return str(response.deployed_model.id)

    def undeploy(self, endpoint: str, deployed_id: str, traffic: Mapping[str, int]) -> None:
        from google.api_core.exceptions import NotFound

        with translated(f"undeploy {deployed_id} from {endpoint}"):
            try:
                operation = self.client.undeploy_model(
                    endpoint=endpoint,
                    deployed_model_id=deployed_id,
                    traffic_split=dict(traffic),
                    timeout=CALL_TIMEOUT_S,
                )
            except NotFound:
                return  # already undeployed: undeploys are idempotent
            operation.result(timeout=OPERATION_TIMEOUT_S)

    def set_traffic(self, endpoint: str, traffic: Mapping[str, int]) -> None:
        from google.cloud import aiplatform_v1 as v1
        from google.protobuf import field_mask_pb2

        with translated(f"set the traffic split of {endpoint}"):
            self.client.update_endpoint(
                endpoint=v1.Endpoint(name=endpoint, traffic_split=dict(traffic)),
                update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]),
                timeout=CALL_TIMEOUT_S,
            )

    def predict(self, endpoint: str, instances: list[Any]) -> Prediction:
        with translated(f"predict on {endpoint}"):
            response = self.prediction.predict(
                endpoint=endpoint, instances=instances, timeout=CALL_TIMEOUT_S
            )
        return Prediction(
            deployed_model_id=str(response.deployed_model_id),
            predictions=tuple(response.predictions),
        )


def endpoint_state(endpoint: Any) -> EndpointState:
    return EndpointState(
        name=endpoint.name,
        deployed=tuple(
            Deployed(id=d.id, model=d.model, version_id=d.model_version_id)
            for d in endpoint.deployed_models
        ),
        traffic={key: int(value) for key, value in endpoint.traffic_split.items()},
    )
