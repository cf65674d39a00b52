"""FluxNode Pods get the ``hive.yaml`` the original SDKs read before they connect, from the hive ConfigMap."""

from __future__ import annotations

from pathlib import PurePosixPath

import yaml

from fluxbee.models import FluxNode, Hive, Runtime
from fluxbee.operator.fluxnode.build import build_pod, resolve_package
from fluxbee.operator.hive.build import build_config_map
from fluxbee.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(image="img:1")


def test_a_fluxnode_pod_mounts_hive_yaml_from_the_hive_config_map_where_jsr_config_dir_points() -> None:
    hive = Hive.model_validate({"metadata": {"name": "h"}, "spec": {"hiveId": "prod", "role": "worker"}})
    node = FluxNode.model_validate({"metadata": {"name": "n"}, "spec": {"hive": "h", "nodeName": "IO.wa",
                                                                        "runtime": "io.wa"}})
    runtime = Runtime.model_validate({"metadata": {"name": "io.wa"}, "spec": {"version": "1", "command": ["run"]}})
    cm = build_config_map(hive, "ns", 1)
    pod = build_pod(node, hive, resolve_package(runtime, None, SETTINGS), "ns", 0, "d", SETTINGS)
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    config_dir = env["JSR_CONFIG_DIR"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == f"{config_dir}/hive.yaml")
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == cm["metadata"]["name"], "the hive's own ConfigMap"
    (item,) = volume["configMap"]["items"]
    assert PurePosixPath(item["path"]).name == mount["subPath"] == "hive.yaml"
    assert yaml.safe_load(cm["data"][item["key"]]) == {"hive_id": "prod", "role": "worker"}
    assert config_dir == "/etc/fluxbee" and mount["readOnly"] is True
