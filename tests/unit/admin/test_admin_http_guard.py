"""The admin API's limits: defaults, overrides from the environment, bad values named."""

from __future__ import annotations

import pytest

from fluxbee.admin.http import AdminSettings, SettingsError


def test_the_limits_have_defaults_and_the_environment_overrides_them() -> None:
    default = AdminSettings.with_limits_from_env({}, port=0)
    assert (default.header_timeout, default.body_timeout, default.max_connections, default.max_depth) == (
        10.0, 30.0, 128, 64)
    tuned = AdminSettings.with_limits_from_env(
        {"FLUXBEE_ADMIN_HEADER_TIMEOUT": "2.5", "FLUXBEE_ADMIN_BODY_TIMEOUT": "5",
         "FLUXBEE_ADMIN_MAX_CONNECTIONS": "16"}, port=0, token="t")
    assert (tuned.header_timeout, tuned.body_timeout, tuned.max_connections, tuned.token) == (2.5, 5.0, 16, "t")


@pytest.mark.parametrize(("var", "raw"), [("FLUXBEE_ADMIN_HEADER_TIMEOUT", "soon"),
                                          ("FLUXBEE_ADMIN_BODY_TIMEOUT", "0"),
                                          ("FLUXBEE_ADMIN_BODY_TIMEOUT", "nan"),
                                          ("FLUXBEE_ADMIN_BODY_TIMEOUT", "inf"),
                                          ("FLUXBEE_ADMIN_MAX_CONNECTIONS", "-1"),
                                          ("FLUXBEE_ADMIN_MAX_CONNECTIONS", "1.5")])
def test_a_bad_limit_is_refused_naming_the_variable(var: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=f"{var}='{raw}': expected a positive"):
        AdminSettings.with_limits_from_env({var: raw})
