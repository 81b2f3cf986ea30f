import dataclasses

import pytest

from bnrepro.core.config import ConfigError, ExperimentConfig, config_hash, current_profile
from bnrepro.experiments import get_experiment, list_experiments
from bnrepro.experiments.lenet import LeNetConfig


def test_hashes_are_pinned():
    # If one of these changes, every stored result of that experiment is
    # orphaned: change them only together with the results they key.
    assert config_hash(LeNetConfig()) == "8dec3d46fa8aa927"
    assert config_hash(LeNetConfig.for_profile("smoke")) == "1c9f579bf4e23b77"
    assert config_hash(LeNetConfig.for_profile("cpu", norm="none", seed=2)) == "e84fcd0c2820a180"


def test_hash_is_stable_and_sensitive():
    a, b = LeNetConfig(), LeNetConfig()
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(a.replace(seed=1))
    assert config_hash(LeNetConfig(lr=1)) == config_hash(LeNetConfig(lr=1.0))
    assert len(config_hash(a)) == 16


def test_profiles_apply_overrides():
    smoke = LeNetConfig.for_profile("smoke")
    assert smoke.epochs == 2 and smoke.n_train == 2048
    assert LeNetConfig.for_profile("cpu") == LeNetConfig()
    assert LeNetConfig.for_profile("smoke", epochs=3).epochs == 3


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LeNetConfig().lr = 3.0


@pytest.mark.parametrize("field,value,needle", [
    ("lr", -1.0, "lr=-1.0"),
    ("dataset", "imagenet", "dataset='imagenet'"),
    ("batch_size", 1, "batch_size=1"),
    ("epochs", 0, "epochs=0"),
    ("norm", "layer", "norm='layer'"),
])
def test_bad_values_name_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        LeNetConfig(**{field: value})


def test_batch_of_one_is_fine_without_bn():
    assert LeNetConfig(norm="none", batch_size=1).batch_size == 1


def test_unknown_field_and_profile():
    with pytest.raises(ConfigError, match="no field"):
        LeNetConfig.for_profile("cpu", learning_rate=0.1)
    with pytest.raises(ConfigError, match="profile"):
        LeNetConfig.for_profile("huge")


def test_profile_env(monkeypatch):
    monkeypatch.setenv("BNREPRO_PROFILE", "smoke")
    assert current_profile() == "smoke"
    monkeypatch.setenv("BNREPRO_PROFILE", "tiny")
    with pytest.raises(ConfigError, match="BNREPRO_PROFILE"):
        current_profile()


def test_registry_has_sweeps_for_every_profile():
    for exp in list_experiments():
        assert issubclass(exp.config, ExperimentConfig)
        for profile in ("smoke", "cpu", "paper"):
            configs = exp.sweep(profile)
            assert configs and len({config_hash(c) for c in configs}) == len(configs)
    with pytest.raises(KeyError, match="unknown experiment"):
        get_experiment("nope")


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match=r"^lr=.*must be a finite number"):
        LeNetConfig(lr=value)
    decoupling = get_experiment("decoupling").config
    with pytest.raises(ConfigError, match=r"^lrs=.*must be a finite number"):
        decoupling.for_profile("smoke", lrs=(0.1, value))


def _configs_with_a_dataset():
    for exp in list_experiments():
        names = {f.name for f in dataclasses.fields(exp.config)}
        if {"dataset", "n_train", "n_test"} <= names:
            yield exp.name


@pytest.mark.parametrize("name", list(_configs_with_a_dataset()))
def test_subsets_larger_than_the_dataset_are_refused_up_front(name):
    from bnrepro.data.datasets import DATASET_SIZES

    base = get_experiment(name).config.for_profile("smoke")
    n_train, n_test = DATASET_SIZES[base.dataset]
    base.replace(n_train=n_train, n_test=n_test)  # the whole set is fine
    with pytest.raises(ConfigError, match=rf"^n_train={n_train + 1}: .* has {n_train} training images"):
        base.replace(n_train=n_train + 1)
    with pytest.raises(ConfigError, match=rf"^n_test={n_test + 1}: .* has {n_test} test images"):
        base.replace(n_test=n_test + 1)
