"""Where a tuning job's next trial goes: grid search, seeded random search, and, standing in
for Vertex's default search (Vizier), Optuna's TPE sampler when Optuna is installed.

A suggester proposes one parameter set at a time (`suggest`, None when the space is used
up) and hears each trial's outcome (`tell`), so several trials can run at once."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from google.cloud import aiplatform_v1

from localcloud.vertex.wire import invalid

Spec = aiplatform_v1.StudySpec
ParameterSpec = Spec.ParameterSpec
Values = dict[str, Any]  # parameter_id -> float or str


class Suggester(Protocol):
    name: str  # what the job's log says it searches with

    def suggest(self, trial_id: str) -> Values | None: ...

    def tell(self, trial_id: str, value: float | None) -> None:
        """The trial's final metric value, or None when it failed."""


def kind(p: Any) -> str:
    """Which value spec a ParameterSpec sets ("double_value_spec", …)."""
    return str(p.WhichOneof("parameter_value_spec"))


def validate(study: Any) -> None:
    """Refuse a study spec Vertex would refuse, naming the field (a raw StudySpec pb)."""
    if not study.metrics:
        raise invalid("HyperparameterTuningJob.study_spec.metrics must hold a metric")
    for i, metric in enumerate(study.metrics):
        if not metric.metric_id:
            raise invalid(f"study_spec.metrics[{i}].metric_id is required")
        if metric.goal == Spec.MetricSpec.GoalType.GOAL_TYPE_UNSPECIFIED:
            raise invalid(f"study_spec.metrics[{i}].goal must be MAXIMIZE or MINIMIZE")
    if not study.parameters:
        raise invalid("HyperparameterTuningJob.study_spec.parameters must hold a parameter")
    seen: set[str] = set()
    for i, p in enumerate(study.parameters):
        where = f"study_spec.parameters[{i}]"
        if not p.parameter_id or p.parameter_id in seen:
            raise invalid(f"{where}.parameter_id must be set and unique")
        seen.add(p.parameter_id)
        _validate_domain(p, where, study.algorithm == Spec.Algorithm.GRID_SEARCH)


def _validate_domain(p: Any, where: str, grid: bool) -> None:
    domain = kind(p)
    log = p.scale_type == ParameterSpec.ScaleType.UNIT_LOG_SCALE
    if domain == "None":
        raise invalid(f"{where} ({p.parameter_id}) sets no value spec")
    if domain in ("double_value_spec", "integer_value_spec"):
        spec = getattr(p, domain)
        if spec.min_value > spec.max_value:
            raise invalid(f"{where}.{domain}: min_value exceeds max_value")
        if log and spec.min_value <= 0:
            raise invalid(f"{where}.{domain}: UNIT_LOG_SCALE needs a positive min_value")
        if grid and domain == "double_value_spec":
            raise invalid(
                f"{where} ({p.parameter_id}): GRID_SEARCH needs DISCRETE, INTEGER or "
                "CATEGORICAL parameters; a DOUBLE parameter has no grid"
            )
    elif domain == "discrete_value_spec":
        values = list(p.discrete_value_spec.values)
        if not values or values != sorted(set(values)):
            raise invalid(f"{where}.discrete_value_spec.values must be distinct and increasing")
        if log and values[0] <= 0:
            raise invalid(f"{where}.discrete_value_spec: UNIT_LOG_SCALE needs positive values")
    elif not p.categorical_value_spec.values:
        raise invalid(f"{where}.categorical_value_spec.values must not be empty")


def make(study: Any, seed: int) -> tuple[Suggester, str | None]:
    """The suggester for the study's algorithm, and a warning for the job's log (None
    when the search is the one asked for)."""
    if study.algorithm == Spec.Algorithm.GRID_SEARCH:
        return Grid(study.parameters), None
    if study.algorithm == Spec.Algorithm.RANDOM_SEARCH:
        return RandomSearch(study.parameters, seed), None
    try:
        return Tpe(study, seed), None
    except ImportError:
        warning = "Optuna is not installed: the default search runs as random search here"
        return RandomSearch(study.parameters, seed), warning


class Grid:
    """Every combination, in order: integers step by one, discrete and categorical values
    as listed. The search ends when the grid is used up."""

    name = "grid search"

    def __init__(self, parameters: Sequence[Any]):
        axes = [[(p.parameter_id, v) for v in _grid_axis(p)] for p in parameters]
        self._points: Iterator[tuple[tuple[str, Any], ...]] = itertools.product(*axes)

    def suggest(self, trial_id: str) -> Values | None:
        point = next(self._points, None)
        return None if point is None else dict(point)

    def tell(self, trial_id: str, value: float | None) -> None:
        return None


def _grid_axis(p: Any) -> list[Any]:
    domain = kind(p)
    if domain == "integer_value_spec":
        return [
            float(v)
            for v in range(p.integer_value_spec.min_value, p.integer_value_spec.max_value + 1)
        ]
    if domain == "discrete_value_spec":
        return list(p.discrete_value_spec.values)
    return list(p.categorical_value_spec.values)


class RandomSearch:
    """Independent draws, seeded by the job so a run can be repeated; log-scaled
    parameters are drawn uniformly in log space."""

    name = "random search"

    def __init__(self, parameters: Sequence[Any], seed: int):
        self._parameters = list(parameters)
        self._random = random.Random(seed)

    def suggest(self, trial_id: str) -> Values | None:
        return {p.parameter_id: self._draw(p) for p in self._parameters}

    def tell(self, trial_id: str, value: float | None) -> None:
        return None

    def _draw(self, p: Any) -> Any:
        domain = kind(p)
        log = p.scale_type == ParameterSpec.ScaleType.UNIT_LOG_SCALE
        if domain in ("double_value_spec", "integer_value_spec"):
            spec = getattr(p, domain)
            low, high = float(spec.min_value), float(spec.max_value)
            if log:
                value = math.exp(self._random.uniform(math.log(low), math.log(high)))
            else:
                value = self._random.uniform(low, high)
            if domain == "integer_value_spec":
                return float(min(max(round(value), spec.min_value), spec.max_value))
            return value
        if domain == "discrete_value_spec":
            return self._random.choice(list(p.discrete_value_spec.values))
        return self._random.choice(list(p.categorical_value_spec.values))


class Tpe:
    """Optuna's Tree-structured Parzen Estimator over the same space: it learns from the
    trials told so far, as Vertex's default search does (Vizier itself is not public)."""

    name = "Optuna TPE (standing in for Vertex's default search)"

    def __init__(self, study: Any, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        maximize = study.metrics[0].goal == Spec.MetricSpec.GoalType.MAXIMIZE
        self._optuna = optuna
        self._study = optuna.create_study(
            direction="maximize" if maximize else "minimize",
            sampler=optuna.samplers.TPESampler(seed=seed),
        )
        self._space = {p.parameter_id: self._distribution(p) for p in study.parameters}
        self._asked: dict[str, Any] = {}

    def _distribution(self, p: Any) -> Any:
        distributions = self._optuna.distributions
        domain = kind(p)
        log = p.scale_type == ParameterSpec.ScaleType.UNIT_LOG_SCALE
        if domain == "double_value_spec":
            spec = p.double_value_spec
            return distributions.FloatDistribution(spec.min_value, spec.max_value, log=log)
        if domain == "integer_value_spec":
            spec = p.integer_value_spec
            return distributions.IntDistribution(spec.min_value, spec.max_value, log=log)
        if domain == "discrete_value_spec":
            return distributions.CategoricalDistribution(list(p.discrete_value_spec.values))
        return distributions.CategoricalDistribution(list(p.categorical_value_spec.values))

    def suggest(self, trial_id: str) -> Values | None:
        trial = self._study.ask(self._space)
        self._asked[trial_id] = trial
        return {
            name: float(value) if isinstance(value, int | float) else value
            for name, value in trial.params.items()
        }

    def tell(self, trial_id: str, value: float | None) -> None:
        trial = self._asked.pop(trial_id, None)
        if trial is None:
            return
        if value is None or not math.isfinite(value):
            self._study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        else:
            self._study.tell(trial, value)
