"""cdk.json configuration: validated once, with errors that say where and what is allowed."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from oncopipe.deployment import ConfigurationError, load_config, read_cdk_json
from oncopipe.errors import ConfigError


def context() -> dict[str, Any]:
    return copy.deepcopy(read_cdk_json())


def test_committed_environments_parse() -> None:
    dev = load_config(context(), None)
    prod = load_config(context(), "prod")
    assert (dev.name, prod.name) == ("dev", "prod")
    assert prod.termination_protection and not dev.termination_protection
    assert dev.prefix == "oncopipe-dev"


def test_unknown_environment_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown environment 'staging'.*dev, prod"):
        load_config(context(), "staging")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("log_retention_days", 100, "log_retention_days: 100 is not one of 1, 3"),
        ("raw_data_infrequent_access_days", 10, "outside 30..3650"),
        ("raw_data_glacier_days", 30, "outside 31..36500"),
        ("vpc_cidr", "8.8.0.0/16", "must be a private range"),
        ("vpc_cidr", "banana", "vpc_cidr"),
        ("termination_protection", "yes", "expected true or false"),
        ("max_azs", True, "expected an integer"),
        ("project", "Onco Pipe", "lower-case letters"),
        ("lake_formation_admin_role_names", ["arn:aws:iam::1:role/x"], "not an IAM role name"),
        ("data_admin_role_names", ["arn:aws:iam::1:role/admin"], "not an IAM role name"),
        ("data_admin_role_names", "admin", "a list of IAM role names"),
    ],
)
def test_bad_values_fail_with_the_key_named(key: str, value: Any, message: str) -> None:
    ctx = context()
    ctx["oncopipe:environments"]["dev"][key] = value
    with pytest.raises(ConfigurationError, match=message) as err:
        load_config(ctx, "dev")
    assert "oncopipe:environments.dev" in str(err.value)


def test_glacier_before_infrequent_access_is_refused() -> None:
    ctx = context()
    ctx["oncopipe:environments"]["dev"]["raw_data_glacier_days"] = 40
    ctx["oncopipe:environments"]["dev"]["raw_data_infrequent_access_days"] = 60
    with pytest.raises(ConfigurationError, match="must be later than"):
        load_config(ctx, "dev")


def test_missing_and_unknown_keys_are_listed() -> None:
    ctx = context()
    del ctx["oncopipe:environments"]["dev"]["max_azs"]
    ctx["oncopipe:environments"]["dev"]["max_az"] = 2
    with pytest.raises(ConfigurationError, match="missing keys: max_azs; unknown keys: max_az"):
        load_config(ctx, "dev")


def test_a_retired_key_says_why_it_went() -> None:
    ctx = context()
    ctx["oncopipe:environments"]["dev"]["pytorch_inference_image"] = "763104351884.dkr.ecr."
    with pytest.raises(ConfigurationError, match=r"dev\.pytorch_inference_image: no longer used "
                       r"\(the training image serves the model.*remove the key"):  # fmt: skip
        load_config(ctx, "dev")


def test_synth_fails_on_bad_config() -> None:
    from aws_cdk import App

    from stacks.app_factory import build_app
    from tests.conftest import cdk_context

    ctx = cdk_context(env="dev")
    ctx["oncopipe:environments"]["dev"]["log_retention_days"] = 8
    with pytest.raises(ConfigurationError, match="log_retention_days"):
        build_app(App(context=ctx))


def test_the_configurable_deid_options_are_the_de_identifiers_own() -> None:
    from dataclasses import fields

    from oncopipe.deployment import DEID_OPTION_NAMES
    from oncopipe.imaging.options import PROFILE_OPTIONS, DeidOptions, options_from_env

    # one list: every switch of the profile but the safelist of private elements
    assert set(PROFILE_OPTIONS) == {f.name for f in fields(DeidOptions)} - {"safe_private"}
    assert DEID_OPTION_NAMES == PROFILE_OPTIONS
    every = {name: True for name in PROFILE_OPTIONS}
    assert options_from_env({"DEID_OPTIONS": json.dumps(every)}).enabled == set(PROFILE_OPTIONS)
    with pytest.raises(ConfigError, match="clean_descriptors"):  # the error lists them
        options_from_env({"DEID_OPTIONS": "[1]"})
