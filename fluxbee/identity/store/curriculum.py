"""Prompt modules, degrees and graduations in the identity store (immutable texts, signed graduations)."""

from __future__ import annotations

from typing import Any

import asyncpg

from fluxbee.identity import degrees as dg
from fluxbee.identity.model import (
    DEGREE_EXISTS,
    DEGREE_NOT_FOUND,
    INVALID_REQUEST,
    MODULE_EXISTS,
    NOT_FOUND,
    DegreeCreateReq,
    GraduateReq,
    IdentityError,
    ModulePutReq,
    fmt,
    parse_id,
)
from fluxbee.identity.store.base import StoreBase


class Curriculum(StoreBase):
    """Modules and degrees are immutable once published; a graduation is signed and replaceable."""

    async def module_put(self, req: ModulePutReq, by: str) -> dict[str, Any]:
        if not req.name.strip() or not req.version.strip():
            raise IdentityError(INVALID_REQUEST, "module name and version must not be empty")
        digest = dg.module_digest(req.prompt_text)

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            old = await conn.fetchrow("SELECT sha256 FROM identity_modules WHERE name = $1 AND version = $2",
                                      req.name, req.version)
            if old is not None:
                if old["sha256"] == digest:
                    return {"name": req.name, "version": req.version, "sha256": digest, "created": False}
                raise IdentityError(MODULE_EXISTS, f"module {req.name}@{req.version} exists with another text; "
                                    "modules are immutable: publish a new version")
            await conn.execute("INSERT INTO identity_modules (name, version, prompt_text, sha256, description, "
                               "category, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)", req.name, req.version,
                               req.prompt_text, digest, req.description, req.category, by)
            return {"name": req.name, "version": req.version, "sha256": digest, "created": True}

        result: dict[str, Any] = await self._write(run)
        return result

    async def degree_create(self, req: DegreeCreateReq, by: str) -> dict[str, Any]:
        if not req.modules:
            raise IdentityError(INVALID_REQUEST, "a degree pins at least one module")

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            pinned: list[dg.PinnedModule] = []
            for ref in req.modules:
                row = await conn.fetchrow("SELECT sha256 FROM identity_modules WHERE name = $1 AND version = $2",
                                          ref.name, ref.version)
                if row is None:
                    raise IdentityError(NOT_FOUND, f"module {ref.name}@{ref.version} does not exist")
                pinned.append(dg.PinnedModule(ref.name, ref.version, row["sha256"]))
            digest = dg.degree_digest(pinned)
            old = await conn.fetchrow("SELECT digest FROM identity_degrees WHERE name = $1 AND version = $2",
                                      req.name, req.version)
            if old is not None:
                if old["digest"] == digest:
                    return {"name": req.name, "version": req.version, "digest": digest, "created": False}
                raise IdentityError(DEGREE_EXISTS, f"degree {req.name}@{req.version} exists with other modules")
            await conn.execute("INSERT INTO identity_degrees (name, version, modules, digest, description, created_by)"
                               " VALUES ($1, $2, $3, $4, $5, $6)", req.name, req.version,
                               [[m.name, m.version, m.sha256] for m in pinned], digest, req.description, by)
            return {"name": req.name, "version": req.version, "digest": digest, "created": True}

        result: dict[str, Any] = await self._write(run)
        return result

    async def graduate(self, req: GraduateReq, key: Any, by: str) -> dict[str, Any]:
        """Sign (ILK, degree, version, digest) and store it; re-graduating replaces it (the rollback path)."""
        ilk = parse_id(req.ilk_id, "ilk")

        async def run(conn: asyncpg.Connection) -> dict[str, Any]:
            row = await self._live_ilk(conn, ilk)
            if row["ilk_type"] != "agent":
                raise IdentityError(INVALID_REQUEST, f"{req.ilk_id} is a {row['ilk_type']}; only agents graduate")
            deg = await conn.fetchrow("SELECT * FROM identity_degrees WHERE name = $1 AND version = $2",
                                      req.degree_name, req.degree_version)
            if deg is None:
                raise IdentityError(DEGREE_NOT_FOUND, f"degree {req.degree_name}@{req.degree_version} does not exist")
            grad = dg.sign_graduation(key, fmt("ilk", ilk), req.degree_name, req.degree_version, deg["digest"])
            await conn.execute(
                "INSERT INTO identity_graduations (ilk_id, degree_name, degree_version, digest, signature, key_id, "
                "graduated_by) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (ilk_id) DO UPDATE SET "
                "degree_name = EXCLUDED.degree_name, degree_version = EXCLUDED.degree_version, "
                "digest = EXCLUDED.digest, signature = EXCLUDED.signature, key_id = EXCLUDED.key_id, "
                "graduated_by = EXCLUDED.graduated_by, graduated_at = now()",
                ilk, grad.degree_name, grad.degree_version, grad.digest, grad.signature, grad.key_id, by)
            await self._history(conn, ilk, f"graduate:{req.degree_name}@{req.degree_version}", by, None)
            return grad.to_dict()

        result: dict[str, Any] = await self._write(run)
        return result

    async def graduation_bundle(self, ilk_id: str) -> dict[str, Any]:
        """What an agent verifies: its graduation and the pinned modules' texts."""
        ilk = parse_id(ilk_id, "ilk")
        async with self.pool.acquire() as conn:
            grad = await conn.fetchrow("SELECT * FROM identity_graduations WHERE ilk_id = $1", ilk)
            if grad is None:
                raise IdentityError(NOT_FOUND, f"{ilk_id} has no graduation")
            deg = await conn.fetchrow("SELECT * FROM identity_degrees WHERE name = $1 AND version = $2",
                                      grad["degree_name"], grad["degree_version"])
            modules = []
            for name, version, sha in deg["modules"]:
                text = await conn.fetchval("SELECT prompt_text FROM identity_modules WHERE name = $1 AND "
                                           "version = $2", name, version)
                modules.append({"name": name, "version": version, "sha256": sha, "prompt_text": text})
        return {"graduation": {"ilk_id": fmt("ilk", ilk), "degree_name": grad["degree_name"],
                               "degree_version": grad["degree_version"], "digest": grad["digest"],
                               "signature": grad["signature"], "key_id": grad["key_id"]},
                "degree": {"name": deg["name"], "version": deg["version"], "digest": deg["digest"]},
                "modules": modules}

    async def list_modules(self) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT name, version, sha256, description, category, created_at "
                                    "FROM identity_modules ORDER BY name, version")
        return [_module_doc(r) for r in rows]

    async def get_module(self, name: str, version: str | None = None) -> list[dict[str, Any]] | dict[str, Any]:
        async with self.pool.acquire() as conn:
            if version is None:
                rows = await conn.fetch("SELECT name, version, sha256, description, category, created_at "
                                        "FROM identity_modules WHERE name = $1 ORDER BY created_at", name)
                if not rows:
                    raise IdentityError(NOT_FOUND, f"module {name} does not exist")
                return [_module_doc(r) for r in rows]
            row = await conn.fetchrow("SELECT * FROM identity_modules WHERE name = $1 AND version = $2", name, version)
        if row is None:
            raise IdentityError(NOT_FOUND, f"module {name}@{version} does not exist")
        return _module_doc(row) | {"prompt_text": row["prompt_text"]}


def _module_doc(r: asyncpg.Record) -> dict[str, Any]:
    return {"name": r["name"], "version": r["version"], "sha256": r["sha256"], "description": r["description"],
            "category": r["category"], "created_at": r["created_at"].isoformat()}

