"""GIVEN a pipeline with a [tuning] table WHEN the config is parsed THEN a frozen study, or
an error naming the file and the key at fault; guards cap the trials."""

from __future__ import annotations

import re

import pytest

from retrain.config import Parameter, parse_config
from retrain.errors import ConfigError
from tests.fakes import SAMPLE_CONFIG

TUNING = """
[pipelines.events.tuning]
metric = "val_accuracy"
goal = "maximize"
max_trial_count = 8
parallel_trial_count = 2
max_failed_trial_count = 2
algorithm = "random"

[pipelines.events.tuning.parameters]
lr = { type = "double", min = 1e-4, max = 1e-1, scale = "log" }
hidden = { type = "integer", min = 32, max = 256 }
batch_size = { type = "discrete", values = [256, 64, 128] }
optimizer = { type = "categorical", values = ["adamw", "sgd"] }
"""
WHERE = "pipelines.toml: pipelines.events.tuning"


def parse(tuning: str = TUNING, guards: str = ""):
    text = SAMPLE_CONFIG.replace("max_concurrent_jobs = 2\n", f"max_concurrent_jobs = 2\n{guards}")
    return parse_config(text + tuning, "pipelines.toml")


def test_a_tuning_table_becomes_a_frozen_study_with_sorted_parameters():
    tuning = parse().pipelines["events"].tuning
    assert tuning is not None
    assert (tuning.metric, tuning.goal, tuning.algorithm) == ("val_accuracy", "maximize", "random")
    assert (tuning.max_trial_count, tuning.parallel_trial_count) == (8, 2)
    assert tuning.max_failed_trial_count == 2
    assert tuning.parameters == (
        Parameter("batch_size", "discrete", values=(64, 128, 256)),
        Parameter("hidden", "integer", 32.0, 256.0),
        Parameter("lr", "double", 1e-4, 1e-1, "log"),
        Parameter("optimizer", "categorical", values=("adamw", "sgd")),
    )


def test_defaults_and_guards_defaults():
    config = parse(
        '[pipelines.events.tuning]\nmetric = "loss"\nmax_trial_count = 3\n'
        '[pipelines.events.tuning.parameters]\nx = { type = "integer", min = 1, max = 4 }\n'
    )
    tuning = config.pipelines["events"].tuning
    assert tuning is not None
    assert (tuning.goal, tuning.parallel_trial_count, tuning.algorithm) == (
        "maximize",
        1,
        "default",
    )
    assert tuning.max_failed_trial_count == 0
    assert (config.guards.max_trials, config.guards.max_parallel_trials) == (32, 4)
    assert config.pipelines["churn"].tuning is None


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('metric = "val_accuracy"\n', "", f"{WHERE}.metric: is required"),
        ('metric = "val_accuracy"', "metric = 3", f"{WHERE}.metric: must be a"),
        ('goal = "maximize"', 'goal = "up"', f"{WHERE}.goal: must be one of maximize, minimize"),
        ("max_trial_count = 8\n", "", f"{WHERE}.max_trial_count: is required"),
        ("max_trial_count = 8", "max_trial_count = 0", f"{WHERE}.max_trial_count: must be at"),
        ("max_trial_count = 8", 'max_trial_count = "8"', f"{WHERE}.max_trial_count: must be an"),
        (
            "parallel_trial_count = 2",
            "parallel_trial_count = 0",
            f"{WHERE}.parallel_trial_count: must be at least 1",
        ),
        (
            "max_trial_count = 8\nparallel_trial_count = 2",
            "max_trial_count = 2\nparallel_trial_count = 3",
            f"{WHERE}.parallel_trial_count: 3 exceeds max_trial_count (2)",
        ),
        (
            "max_failed_trial_count = 2",
            "max_failed_trial_count = -1",
            f"{WHERE}.max_failed_trial_count: must be at least 0",
        ),
        (
            "max_failed_trial_count = 2",
            "max_failed_trial_count = 9",
            f"{WHERE}.max_failed_trial_count: must be at most 8",
        ),
        ('algorithm = "random"', 'algorithm = "bayes"', f"{WHERE}.algorithm: must be one of"),
        ('algorithm = "random"', 'algoritm = "random"', f"{WHERE}.algoritm: unknown key"),
        (
            "[pipelines.events.tuning.parameters]",
            "[pipelines.events.tuning.params]",
            f"{WHERE}.parameters: is required",
        ),
        (
            'lr = { type = "double", min = 1e-4, max = 1e-1, scale = "log" }',
            'lr = { type = "float", min = 1e-4, max = 1e-1 }',
            f"{WHERE}.parameters.lr.type: must be one of double, integer, discrete, categorical",
        ),
        (
            'lr = { type = "double", min = 1e-4, max = 1e-1, scale = "log" }',
            "lr = { min = 1e-4, max = 1e-1 }",
            f"{WHERE}.parameters.lr.type: must be one of",
        ),
        (
            'lr = { type = "double", min = 1e-4, max = 1e-1, scale = "log" }',
            'lr = { type = "double", max = 1e-1 }',
            f"{WHERE}.parameters.lr.min: is required",
        ),
        (
            'lr = { type = "double", min = 1e-4, max = 1e-1, scale = "log" }',
            'lr = { type = "double", min = 1e-4, max = "big" }',
            f"{WHERE}.parameters.lr.max: must be a finite number",
        ),
        (
            'lr = { type = "double", min = 1e-4, max = 1e-1, scale = "log" }',
            'lr = { type = "double", min = 1e-4, max = inf }',
            f"{WHERE}.parameters.lr.max: must be a finite number",
        ),
        (
            'lr = { type = "double", min = 1e-4, max = 1e-1, scale = "log" }',
            'lr = { type = "double", min = 0.5, max = 0.5 }',
            f"{WHERE}.parameters.lr.max: must be greater than min (0.5)",
        ),
        (
            'lr = { type = "double", min = 1e-4, max = 1e-1, scale = "log" }',
            'lr = { type = "double", min = 0.0, max = 1.0, scale = "log" }',
            f'{WHERE}.parameters.lr.min: must be positive with scale = "log"',
        ),
        (
            'lr = { type = "double", min = 1e-4, max = 1e-1, scale = "log" }',
            'lr = { type = "double", min = 0.1, max = 1.0, scale = "exp" }',
            f"{WHERE}.parameters.lr.scale: must be one of linear, log",
        ),
        (
            'lr = { type = "double", min = 1e-4, max = 1e-1, scale = "log" }',
            'lr = { type = "double", min = 0.1, max = 1.0, step = 0.1 }',
            f"{WHERE}.parameters.lr.step: unknown key",
        ),
        (
            'hidden = { type = "integer", min = 32, max = 256 }',
            'hidden = { type = "integer", min = 32.5, max = 256 }',
            f"{WHERE}.parameters.hidden.min: must be an integer for an integer parameter",
        ),
        (
            'batch_size = { type = "discrete", values = [256, 64, 128] }',
            'batch_size = { type = "discrete", values = [] }',
            f"{WHERE}.parameters.batch_size.values: must be a non-empty list of finite numbers",
        ),
        (
            'batch_size = { type = "discrete", values = [256, 64, 128] }',
            'batch_size = { type = "discrete", values = [64, "x"] }',
            f"{WHERE}.parameters.batch_size.values: must be a list of finite numbers, not 'x'",
        ),
        (
            'batch_size = { type = "discrete", values = [256, 64, 128] }',
            'batch_size = { type = "discrete", values = [64, 64] }',
            f"{WHERE}.parameters.batch_size.values: must not repeat a value",
        ),
        (
            'batch_size = { type = "discrete", values = [256, 64, 128] }',
            'batch_size = { type = "discrete", values = [0, 64], scale = "log" }',
            f'{WHERE}.parameters.batch_size.values: must all be positive with scale = "log"',
        ),
        (
            'batch_size = { type = "discrete", values = [256, 64, 128] }',
            'batch_size = { type = "discrete" }',
            f"{WHERE}.parameters.batch_size.values: is required",
        ),
        (
            'optimizer = { type = "categorical", values = ["adamw", "sgd"] }',
            'optimizer = { type = "categorical", values = ["adamw", 1] }',
            f"{WHERE}.parameters.optimizer.values: must be a list of non-empty strings",
        ),
        (
            'optimizer = { type = "categorical", values = ["adamw", "sgd"] }',
            'optimizer = { type = "categorical", values = ["sgd"], scale = "log" }',
            f"{WHERE}.parameters.optimizer.scale: unknown key",
        ),
        (
            'optimizer = { type = "categorical", values = ["adamw", "sgd"] }',
            'optimizer = "adamw"',
            f"{WHERE}.parameters.optimizer must be a table",
        ),
        (
            'optimizer = { type = "categorical", values = ["adamw", "sgd"] }',
            '"bad name" = { type = "categorical", values = ["a"] }',
            f"{WHERE}.parameters.bad name: parameter names use letters",
        ),
        (
            'algorithm = "random"',
            'algorithm = "grid"',
            f"{WHERE}.parameters.lr: a double has no grid",
        ),
    ],
)
def test_invalid_tuning_names_file_and_key(old, new, message):
    assert old in TUNING, old
    with pytest.raises(ConfigError) as caught:
        parse(TUNING.replace(old, new))
    assert message in str(caught.value)


def test_a_table_without_parameters_is_refused():
    with pytest.raises(ConfigError, match=f"{WHERE}.parameters: is required"):
        parse('[pipelines.events.tuning]\nmetric = "m"\nmax_trial_count = 2\n')
    with pytest.raises(ConfigError, match=f"{WHERE}.parameters: must name at least one"):
        parse(
            '[pipelines.events.tuning]\nmetric = "m"\nmax_trial_count = 2\n'
            "[pipelines.events.tuning.parameters]\n"
        )


def test_a_tuned_parameter_may_not_also_be_a_fixed_hyperparameter():
    # churn fixes lr and batch_size: tuning either would pass it twice to every trial.
    tuning = TUNING.replace("pipelines.events.", "pipelines.churn.")
    with pytest.raises(ConfigError) as caught:
        parse(tuning)
    assert "pipelines.churn.tuning.parameters.batch_size: is also a fixed hyperparameter" in str(
        caught.value
    )


def test_guards_cap_the_trials_and_their_parallelism():
    with pytest.raises(ConfigError, match=f"{WHERE}.max_trial_count: 8 exceeds guards.max_trials"):
        parse(guards="max_trials = 4\n")
    with pytest.raises(
        ConfigError, match=f"{WHERE}.parallel_trial_count: 2 exceeds guards.max_parallel_trials"
    ):
        parse(guards="max_parallel_trials = 1\n")
    many = TUNING.replace("max_trial_count = 8", "max_trial_count = 33")
    with pytest.raises(ConfigError, match=re.escape("33 exceeds guards.max_trials (32)")):
        parse(many)
    wide = TUNING.replace("parallel_trial_count = 2", "parallel_trial_count = 5")
    with pytest.raises(ConfigError, match=re.escape("5 exceeds guards.max_parallel_trials (4)")):
        parse(wide)
    assert parse(many, guards="max_trials = 40\n").pipelines["events"].tuning is not None
    for bad in ("max_trials = 0\n", "max_parallel_trials = 0\n", 'max_trials = "x"\n'):
        with pytest.raises(ConfigError, match=re.escape("pipelines.toml: guards.max_")):
            parse(guards=bad)
