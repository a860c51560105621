"""Moving traffic on an endpoint: the smoke test of a deployment, promotion to all the
traffic, and undeploying with the traffic handed back. Used on a job end (deployer.py)
and when a tick settles a canary (ticks.py); every step sets a target, so a repeat
changes nothing."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from retrain.errors import PermanentError, TransientError
from retrain.gate import without
from retrain.ports import Blobs, Endpoints

SMOKE_TRIES_PER_PERCENT = 500  # a canary's smoke test: ~500/percent predictions at most
TRANSIENT_SMOKE_RETRIES = 3


def read_json(blobs: Blobs, uri: str) -> dict[str, Any]:
    """A JSON object from the model directory; ValueError says why it is unusable."""
    name = uri.rsplit("/", 1)[-1]
    try:
        text, _ = blobs.read_text(uri)
    except (PermanentError, OSError) as err:
        raise ValueError(f"{name} is missing or unreadable: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is not JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{name} is not a JSON object")
    return data


class Rollout:
    def __init__(self, endpoints: Endpoints, blobs: Blobs, sleep: Callable[[float], None]):
        self.endpoints = endpoints
        self.blobs = blobs
        self._sleep = sleep

    def smoke(self, endpoint: str, deployed_id: str, directory: str, canary: int) -> str | None:
        """None when the deployed model answered the trainer's smoke.json, else what went
        wrong. Predictions follow the traffic split: a canary is asked until it answers."""
        try:
            instances = read_json(self.blobs, directory + "smoke.json").get("instances")
        except ValueError as err:
            return f"no smoke test: {err}"
        if not isinstance(instances, list) or not instances:
            return "smoke.json has no 'instances' list"
        tries = math.ceil(SMOKE_TRIES_PER_PERCENT / canary) if canary else 1
        transient_left = TRANSIENT_SMOKE_RETRIES
        while tries > 0:
            try:
                answer = self.endpoints.predict(endpoint, instances)
            except PermanentError as err:
                return f"smoke test prediction failed: {err}"
            except TransientError as err:
                transient_left -= 1
                if transient_left <= 0:
                    return f"smoke test prediction failed: {err}"
                self._sleep(0.5)
                continue
            tries -= 1
            if answer.deployed_model_id == deployed_id:
                if len(answer.predictions) != len(instances):
                    return (
                        f"smoke test: {len(answer.predictions)} predictions "
                        f"for {len(instances)} instances"
                    )
                return None
        return f"the new deployment {deployed_id} answered none of the smoke predictions"

    def undeploy(self, endpoint: str, deployed_id: str, previous: Mapping[str, int]) -> None:
        """Undeploy `deployed_id`, giving its traffic back as it was before (`previous`)
        when those deployments are all still there, else to the others pro rata."""
        state = self.endpoints.get(endpoint)
        remaining = {d.id for d in state.deployed if d.id != deployed_id}
        if previous and set(previous) <= remaining and sum(previous.values()) == 100:
            traffic = {key: previous.get(key, 0) for key in remaining}
        else:
            traffic = without(state.traffic, deployed_id)
        self.endpoints.undeploy(endpoint, deployed_id, traffic)

    def promote(self, endpoint: str, deployed_id: str) -> None:
        """All traffic to `deployed_id`, then every other deployment undeployed."""
        state = self.endpoints.get(endpoint)
        target = {d.id: (100 if d.id == deployed_id else 0) for d in state.deployed}
        if {k: v for k, v in state.traffic.items() if v} != {deployed_id: 100}:
            self.endpoints.set_traffic(endpoint, target)
        remaining = set(target)
        for other in state.deployed:
            if other.id != deployed_id:
                remaining.discard(other.id)
                self.endpoints.undeploy(
                    endpoint, other.id, {key: target[key] for key in sorted(remaining)}
                )
