"""The model registry: models as numbered versions, with aliases that live on one
version at a time, as on Vertex: the first version gets the `default` alias, and a later
upload takes it only when its own `version_aliases` name it (the SDK's
`is_default_version=True` sends it); the version holding `default` is what a name without
`@version` means. Model-level labels (UpdateModel without a version) are kept apart from
each version's own labels and merged into every version returned."""

from __future__ import annotations

import re
from typing import Any

from google.cloud import aiplatform_v1
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from localcloud.vertex import filters, listing
from localcloud.vertex.jobs import validate_labels
from localcloud.vertex.operations import OperationService
from localcloud.vertex.state import ModelPb, State
from localcloud.vertex.wire import (
    ApiError,
    invalid,
    new_id,
    not_found,
    now,
    parse,
    precondition,
)

DEFAULT_ALIAS = "default"
# Every model here has a serving container (custom or prebuilt): Vertex lists such models
# as deployable on dedicated resources only.
DEPLOYMENT_TYPES = (aiplatform_v1.Model.DeploymentResourcesType.DEDICATED_RESOURCES,)
# ListModels: `model` (the id) and display_name take = and !=, labels the map functions.
MODEL_FILTER: dict[str, filters.Field] = {
    "model": filters.string(),
    "display_name": filters.string(),
    "labels": filters.LABELS,
    "create_time": filters.TIMESTAMP,
    "update_time": filters.TIMESTAMP,
}
VERSION_FILTER: dict[str, filters.Field] = {
    "labels": filters.LABELS,
    "display_name": filters.string(),
    "version_id": filters.string(),
    "create_time": filters.TIMESTAMP,
    "update_time": filters.TIMESTAMP,
}
MODEL_ORDER: listing.SortKeys = {
    "display_name": lambda m: m.display_name,
    "create_time": lambda m: listing.time_key(m.create_time),
    "update_time": lambda m: listing.time_key(m.update_time),
}
VERSION_ORDER: listing.SortKeys = {
    "create_time": lambda m: listing.time_key(m.version_create_time),
    "update_time": lambda m: listing.time_key(m.version_update_time),
}
# UpdateModel: which fields a model-level and a version-level update may set.
_MODEL_FIELDS = frozenset({"display_name", "description", "labels"})
_VERSION_FIELDS = frozenset({"version_description", "labels"})
_ALIAS = re.compile(r"[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]")
_MODEL_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
# projects/P/locations/L/models/ID, optionally @VERSION or @ALIAS.
_MODEL_NAME = re.compile(
    r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/models/(?P<id>[^/@]+)"
    r"(?:@(?P<version>[^/@]+))?"
)


class ModelService:
    def __init__(self, state: State, operations: OperationService) -> None:
        self._state = state
        self._operations = operations

    # -- API -------------------------------------------------------------------------

    def upload(self, project: str, location: str, body: Any) -> operations_pb2.Operation:
        request = parse(body, aiplatform_v1.UploadModelRequest.pb()(), "UploadModelRequest")
        model = request.model
        _validate_model(model)
        aliases = _unique_aliases(list(model.version_aliases), "UploadModelRequest.model")
        with self._state.lock:
            model_id = self._model_id_for(project, location, request)
            versions = self._state.models.setdefault(model_id, {})
            version_id = str(max((int(v) for v in versions), default=0) + 1)
            stamp = now()
            for output_only in (
                "deployed_models",
                "version_aliases",
                "etag",
                "supported_deployment_resources_types",
            ):
                model.ClearField(output_only)
            model.supported_deployment_resources_types.extend(DEPLOYMENT_TYPES)
            model.name = f"projects/{project}/locations/{location}/models/{model_id}"
            model.version_id = version_id
            model.version_create_time.CopyFrom(stamp)
            model.version_update_time.CopyFrom(stamp)
            first = versions.get("1")
            model.create_time.CopyFrom(first.create_time if first is not None else stamp)
            model.update_time.CopyFrom(stamp)
            versions[version_id] = model
            # The first version is the default; a later one only if it asks to be. An
            # alias another version holds moves to the new one (aliases are unique).
            if first is None and DEFAULT_ALIAS not in aliases:
                aliases.insert(0, DEFAULT_ALIAS)
            _move_aliases(versions, version_id, aliases)
            self._state.save()
        response = aiplatform_v1.UploadModelResponse.pb()(
            model=model.name, model_version_id=version_id
        )
        return self._operations.finish(
            model.name, aiplatform_v1.UploadModelOperationMetadata.pb()(), response
        )

    def get(self, name: str) -> Any:
        with self._state.lock:
            return self._view(self.resolve(name))

    def list(self, project: str, location: str, query: dict[str, str]) -> Any:
        # ListModels lists each model once, as its default version.
        with self._state.lock:
            defaults = [
                self._view(_default_version(versions))
                for versions in self._state.models.values()
                if versions
            ]
        here = [m for m in defaults if listing.in_location(m.name, project, location)]
        found = listing.select(here, query, MODEL_FILTER, _model_field)
        return listing.respond(
            found, query, aiplatform_v1.ListModelsResponse, "models", sort_keys=MODEL_ORDER
        )

    def list_versions(self, name: str, query: dict[str, str]) -> Any:
        with self._state.lock:
            versions = self._versions_of(name)
            ordered = [
                self._view(model)
                for _, model in sorted(versions.items(), key=lambda item: int(item[0]))
            ]
        found = listing.select(ordered, query, VERSION_FILTER, _version_field)
        return listing.respond(
            found,
            query,
            aiplatform_v1.ListModelVersionsResponse,
            "models",
            newest_first=False,
            sort_keys=VERSION_ORDER,
        )

    def update(self, name: str, query: dict[str, str], body: Any) -> Any:
        """UpdateModel: `models/ID` (or `models/ID@-`) updates the model's display_name,
        description and labels; `models/ID@VERSION` a version's version_description and
        labels. Mixing the two is a precondition error, as documented."""
        patch = parse(body, ModelPb(), "Model")
        paths = {
            filters.snake_case(path) for path in query.get("updateMask", "").split(",") if path
        }
        if not paths:
            raise invalid("update_mask is required: name the fields to update")
        unknown = sorted(paths - _MODEL_FIELDS - _VERSION_FIELDS)
        if unknown:
            raise invalid(
                f"update_mask names fields that cannot be updated: {', '.join(unknown)}; "
                "supported: display_name, description, labels, version_description"
            )
        base, _, version = name.partition("@")
        model_level = version in ("", "-")
        allowed = _MODEL_FIELDS if model_level else _VERSION_FIELDS
        if not paths <= allowed:
            raise precondition(
                f"update_mask fields {', '.join(sorted(paths - allowed))} cannot be updated "
                f"through {name}: update display_name and description on the model "
                "(models/ID), version_description on a version (models/ID@VERSION)"
            )
        if "display_name" in paths and not patch.display_name:
            raise invalid("Model.display_name cannot be empty")
        if "labels" in paths:
            validate_labels(patch.labels, "Model")
        with self._state.lock:
            versions = self._versions_of(base)
            target = self.resolve(base if model_level else name)
            changed = list(versions.values()) if model_level else [target]
            stamp = now()
            for model in changed:
                if "display_name" in paths:
                    model.display_name = patch.display_name
                if "description" in paths:
                    model.description = patch.description
                if "version_description" in paths:
                    model.version_description = patch.version_description
                if "labels" in paths and not model_level:
                    model.ClearField("labels")
                    model.labels.update(patch.labels)
                model.update_time.CopyFrom(stamp)
                if not model_level:
                    model.version_update_time.CopyFrom(stamp)
            if "labels" in paths and model_level:
                self._state.model_labels[_id_of(target.name)] = dict(patch.labels)
            self._state.save()
            return self._view(target)

    def merge_version_aliases(self, name: str, body: Any) -> Any:
        request = parse(
            body, aiplatform_v1.MergeVersionAliasesRequest.pb()(), "MergeVersionAliasesRequest"
        )
        requested = _unique_aliases(list(request.version_aliases), "MergeVersionAliasesRequest")
        adds = [alias for alias in requested if not alias.startswith("-")]
        removes = [alias[1:] for alias in requested if alias.startswith("-")]
        for alias in (*adds, *removes):
            _validate_alias(alias)
        if DEFAULT_ALIAS in removes:
            raise invalid("the default alias cannot be removed: add it to another version")
        if set(adds) & set(removes):
            raise invalid(
                f"version_aliases both adds and removes {sorted(set(adds) & set(removes))}"
            )
        with self._state.lock:
            model = self.resolve(name)
            versions = self._state.models[model.name.rsplit("/", 1)[1]]
            kept = [alias for alias in model.version_aliases if alias not in removes]
            del model.version_aliases[:]
            model.version_aliases.extend(kept)
            _move_aliases(versions, model.version_id, adds)
            model.version_update_time.CopyFrom(now())
            model.update_time.CopyFrom(model.version_update_time)
            self._state.save()
            return self._view(model)

    def delete_version(self, name: str) -> operations_pb2.Operation:
        with self._state.lock:
            model = self.resolve(name)
            if "@" not in name:
                raise invalid(f"DeleteModelVersion needs a version: {name}@VERSION")
            if DEFAULT_ALIAS in model.version_aliases:
                raise precondition(
                    f"Version {model.version_id} of {model.name} is the default version: "
                    "move the default alias to another version, or delete the model"
                )
            self._refuse_if_deployed(model.name, {model.version_id})
            del self._state.models[model.name.rsplit("/", 1)[1]][model.version_id]
            self._state.save()
        return self._operations.finish(
            f"{model.name}@{model.version_id}",
            aiplatform_v1.DeleteOperationMetadata.pb()(),
            empty_pb2.Empty(),
        )

    def delete(self, name: str) -> operations_pb2.Operation:
        if "@" in name:
            raise invalid(f"DeleteModel takes a model without a version; use deleteVersion: {name}")
        with self._state.lock:
            versions = self._versions_of(name)
            base = next(iter(versions.values())).name
            self._refuse_if_deployed(base, set(versions))
            del self._state.models[_id_of(base)]
            self._state.model_labels.pop(_id_of(base), None)
            self._state.save()
        return self._operations.finish(
            base, aiplatform_v1.DeleteOperationMetadata.pb()(), empty_pb2.Empty()
        )

    def _refuse_if_deployed(self, model_name: str, version_ids: set[str]) -> None:
        for endpoint in self._state.endpoints.values():
            for deployed in endpoint.deployed_models:
                if deployed.model == model_name and deployed.model_version_id in version_ids:
                    raise precondition(
                        f"{model_name}@{deployed.model_version_id} is deployed to "
                        f"{endpoint.name} as {deployed.id}: undeploy it first"
                    )

    def _view(self, model: Any) -> Any:
        """A version as the API returns it: a copy, with the model-level labels merged
        under the version's own."""
        clone = _copy(model)
        model_labels = self._state.model_labels.get(_id_of(model.name), {})
        merged = {**model_labels, **dict(model.labels)}
        clone.ClearField("labels")
        clone.labels.update(merged)
        return clone

    # -- shared with endpoints ----------------------------------------------------------

    def resolve(self, name: str) -> Any:
        """The stored version a model name means: `models/ID` is the default version,
        `models/ID@N` version N, `models/ID@ALIAS` the version holding the alias."""
        match = _MODEL_NAME.fullmatch(name)
        if match is None:
            raise invalid(
                f"Invalid model name {name!r}: expected "
                "projects/PROJECT/locations/LOCATION/models/ID[@VERSION|@ALIAS]"
            )
        versions = self._versions_of(name)
        wanted = match["version"]
        if wanted is None:
            return _default_version(versions)
        if wanted in versions:
            return versions[wanted]
        for model in versions.values():
            if wanted in model.version_aliases:
                return model
        raise not_found(f"Model {name} not found: no version or alias {wanted!r}")

    def _versions_of(self, name: str) -> dict[str, Any]:
        match = _MODEL_NAME.fullmatch(name)
        if match is None:
            raise invalid(f"Invalid model name {name!r}")
        versions = self._state.models.get(match["id"])
        if not versions or not listing.in_location(
            next(iter(versions.values())).name, match["project"], match["location"]
        ):
            base = name.split("@", 1)[0]
            raise not_found(f"Model {base} not found")
        return versions

    def _model_id_for(self, project: str, location: str, request: Any) -> str:
        if request.parent_model:
            parent = _MODEL_NAME.fullmatch(request.parent_model)
            if parent is None or parent["version"] is not None:
                raise invalid(
                    f"UploadModelRequest.parent_model {request.parent_model!r} must be "
                    "projects/PROJECT/locations/LOCATION/models/ID"
                )
            if (parent["project"], parent["location"]) != (project, location):
                raise invalid(
                    f"UploadModelRequest.parent_model {request.parent_model!r} is not in "
                    f"projects/{project}/locations/{location}"
                )
            self._versions_of(request.parent_model)
            return str(parent["id"])
        if request.model_id:
            if not _MODEL_ID.fullmatch(request.model_id):
                raise invalid(
                    f"UploadModelRequest.model_id {request.model_id!r} must be 1-128 lowercase "
                    "letters, digits or dashes, not starting with a dash"
                )
            if request.model_id in self._state.models:
                raise ApiError(
                    "ALREADY_EXISTS",
                    f"Model {request.model_id} already exists: pass it as parent_model to "
                    "upload a new version",
                )
            return str(request.model_id)
        return new_id(self._state.models)


def _validate_model(model: Any) -> None:
    if not model.display_name:
        raise invalid("UploadModelRequest.model.display_name is required")
    if not model.container_spec.image_uri:
        raise invalid("UploadModelRequest.model.container_spec.image_uri is required")
    validate_labels(model.labels, "Model")
    for alias in model.version_aliases:
        _validate_alias(alias)


def _unique_aliases(aliases: list[str], what: str) -> list[str]:
    repeated = sorted({alias for alias in aliases if aliases.count(alias) > 1})
    if repeated:
        raise invalid(f"{what}.version_aliases repeats {', '.join(repeated)}: aliases are unique")
    return aliases


def _validate_alias(alias: str) -> None:
    if not _ALIAS.fullmatch(alias):
        raise invalid(
            f"Invalid version alias {alias!r}: use [a-z][a-zA-Z0-9-]{{0,126}}[a-z0-9] "
            "(prefix with - only to remove an alias)"
        )


def _move_aliases(versions: dict[str, Any], version_id: str, aliases: Any) -> None:
    """Give `aliases` to `version_id`, taking each from whichever version held it."""
    target = versions[version_id]
    for alias in aliases:
        for other_id, other in versions.items():
            if other_id != version_id and alias in other.version_aliases:
                remaining = [a for a in other.version_aliases if a != alias]
                del other.version_aliases[:]
                other.version_aliases.extend(remaining)
        if alias not in target.version_aliases:
            target.version_aliases.append(alias)


def _default_version(versions: dict[str, Any]) -> Any:
    for model in versions.values():
        if DEFAULT_ALIAS in model.version_aliases:
            return model
    return versions[max(versions, key=int)]


def _model_field(model: Any, name: str) -> Any:
    return _id_of(model.name) if name == "model" else getattr(model, name)


def _version_field(model: Any, name: str) -> Any:
    # A version's own times, not the model's.
    if name in ("create_time", "update_time"):
        return getattr(model, f"version_{name}")
    return getattr(model, name)


def _id_of(name: str) -> str:
    return name.split("@", 1)[0].rsplit("/", 1)[1]


def _copy(model: Any) -> Any:
    clone = ModelPb()
    clone.CopyFrom(model)
    return clone
