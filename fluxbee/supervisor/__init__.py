"""The supervisor behind ``fluxbee up`` (local mode): a hive file run as supervised processes on one machine.

:mod:`.hive` runs and reconciles the processes; :mod:`.plan` turns the hive file (and the nodes the
admin API spawned) into process specs; :mod:`.services` adds the hive's SY services; :mod:`.store`
is the runtime store; :mod:`.credentials` the claimed names' tokens; :mod:`.hive_yaml` the
``hive.yaml`` that nodes built with the original SDKs read. Its admin backend is
:mod:`fluxbee.admin.supervisor_backend`; its identity processes come from
:mod:`fluxbee.identity.supervised`.
"""
