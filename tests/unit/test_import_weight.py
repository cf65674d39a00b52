"""What importing the models package and the router's modules loads, checked in a fresh interpreter.

``fluxbee.models`` loads a submodule only when one of its names is first used, so the router (which
reads routes and VPN rules only) does not pay for every resource model; and the router's modules do
not import the link machinery at module level.  The running router is checked end to end in
``tests/integration/test_router_imports.py``; these checks are the quick, module-level half.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fluxbee.models as models
from fluxbee.models import links, resources, routing, status


def loaded_after(code: str) -> list[str]:
    """The fluxbee, pydantic and cryptography modules a fresh interpreter holds after running ``code``."""
    prefixes = ("fluxbee.models", "fluxbee.dataplane.link", "fluxbee.dataplane.router.link", "pydantic", "cryptography")
    script = (f"{code}\nimport json, sys\n"
              f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_package_loads_no_model_and_no_pydantic() -> None:
    assert loaded_after("import fluxbee.models") == ["fluxbee.models"]


def test_a_route_model_loads_the_routing_models_only() -> None:
    mods = loaded_after("from fluxbee.models import RouteSpec\nRouteSpec(prefix='WF.x')")
    assert [m for m in mods if m.startswith("fluxbee.")] == ["fluxbee.models", "fluxbee.models.routing"]
    assert "pydantic" in mods


def test_a_resource_model_loads_what_it_is_built_from() -> None:
    mods = loaded_after("from fluxbee.models import Hive")
    assert {"fluxbee.models.resources", "fluxbee.models.links", "fluxbee.models.routing",
            "fluxbee.models.status"} <= set(mods)


def test_the_router_and_its_command_line_import_no_link_machinery_and_no_other_model() -> None:
    mods = loaded_after("import fluxbee.cli\nfluxbee.cli.build_parser()\nimport fluxbee.dataplane.router.server")
    heavy = ("cryptography", "fluxbee.dataplane.link.certs", "fluxbee.dataplane.link.manager",
             "fluxbee.dataplane.link.protocol", "fluxbee.dataplane.link.session", "fluxbee.dataplane.link.table",
             "fluxbee.dataplane.router.links", "fluxbee.dataplane.router.linkroute")
    assert [m for m in mods if m.startswith(heavy)] == []
    assert [m for m in mods if m.startswith("fluxbee.models")] == ["fluxbee.models", "fluxbee.models.routing"]
    assert "fluxbee.dataplane.link.settings" in mods  # the light settings module: the check sees the package


def test_every_public_name_resolves_to_the_object_its_module_defines() -> None:
    homes = (links, resources, routing, status)
    for name in models.__all__:
        value = getattr(models, name)
        defined = [getattr(m, name) for m in homes if name in vars(m)]
        assert not defined or all(value is d for d in defined), name
    assert models.Hive is resources.Hive and models.RouteSpec is routing.RouteSpec is resources.RouteSpec
    assert models.WanSpec is links.WanSpec and models.Condition is status.Condition
    assert set(models.__all__) <= set(dir(models))


def test_the_lazy_table_and_the_public_names_agree() -> None:
    eager = {"API_GROUP", "API_VERSION", "validate_node_name"}
    assert set(models._LAZY) | eager == set(models.__all__)
    for name, module in models._LAZY.items():
        assert name in vars(getattr(models, module)), f"{name} is not defined in fluxbee.models.{module}"


def test_an_unknown_name_is_an_attribute_error_and_an_import_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Hives'"):
        models.Hives  # noqa: B018
    with pytest.raises(ImportError, match="Hives"):
        exec("from fluxbee.models import Hives", {})
