"""SY.policy: one hive's routing-policy lifecycle (compile, stage, apply, rollback, check).

:mod:`.store` keeps the files, :mod:`.lifecycle` the rules (versions only grow; a failed compile
takes none), :mod:`.transfer` a compiled artefact carried from another hive in chunks and verified,
:mod:`.node` the socket side and the policy region, :mod:`.cli` ``fluxbee policy``.
"""
