from __future__ import annotations

import pytest

from oncopipe.errors import ConfigError
from oncopipe.pseudonym import (
    is_patient_key,
    keyer,
    load_secret,
    patient_key,
    secret_from_string,
)

SECRET = bytes(range(32))


def test_key_is_stable_short_and_shaped() -> None:
    key = patient_key(SECRET, "MRN-0012345")
    assert key == patient_key(SECRET, "MRN-0012345")
    assert is_patient_key(key)
    assert len(key) == 19


def test_key_matches_published_hmac_construction() -> None:
    import base64
    import hashlib
    import hmac

    digest = hmac.new(SECRET, b"MRN-0012345", hashlib.sha256).digest()
    expected = "pk-" + base64.b32encode(digest[:10]).decode().lower()
    assert patient_key(SECRET, "MRN-0012345") == expected


def test_surrounding_whitespace_does_not_change_the_key_but_case_does() -> None:
    assert patient_key(SECRET, "  MRN-1 \n") == patient_key(SECRET, "MRN-1")
    assert patient_key(SECRET, "mrn-1") != patient_key(SECRET, "MRN-1")


def test_another_secret_gives_another_key() -> None:
    assert patient_key(SECRET, "MRN-1") != patient_key(bytes(32), "MRN-1")


def test_distinct_patients_get_distinct_keys() -> None:
    keys = {patient_key(SECRET, f"MRN-{i}") for i in range(20000)}
    assert len(keys) == 20000


def test_empty_id_and_short_secret_refused_without_echoing_the_id() -> None:
    with pytest.raises(ValueError, match="empty"):
        patient_key(SECRET, "   ")
    with pytest.raises(ValueError, match="at least 32 bytes") as err:
        patient_key(b"short", "MRN-SECRET-77")
    assert "MRN-SECRET-77" not in str(err.value)


def test_keyer_memoises_the_same_function() -> None:
    key = keyer(SECRET)
    assert key("MRN-9") == patient_key(SECRET, "MRN-9")


def test_secret_from_hex_and_errors() -> None:
    assert secret_from_string(SECRET.hex()) == SECRET
    with pytest.raises(ConfigError, match="hex"):
        secret_from_string("not-hex")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        secret_from_string("00ff")


def test_load_secret_from_environment_and_missing() -> None:
    assert load_secret({"ONCOPIPE_PSEUDONYM_SECRET": SECRET.hex()}) == SECRET
    with pytest.raises(ConfigError, match="PSEUDONYM_SECRET_ARN"):
        load_secret({})


def test_load_secret_from_secrets_manager(aws_env: None) -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(
            Name="oncopipe/test-key", SecretString=SECRET.hex()
        )["ARN"]
        env = {"PSEUDONYM_SECRET_ARN": arn, "AWS_REGION": "eu-west-1"}
        assert load_secret(env) == SECRET
