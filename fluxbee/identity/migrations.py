"""Versioned schema migrations of ``fluxbee_identity`` (ours; applied in order, once each).

Rules: a migration is never edited once released — add a new one.  Each runs in
its own transaction under an advisory lock, so two services starting at once
cannot both apply it.
"""

from __future__ import annotations

from typing import Final

import asyncpg

LOCK_KEY: Final = 0x464C5842_4944  # "FLXB" "ID"

MIGRATIONS: Final[tuple[tuple[int, str, str], ...]] = (
    (1, "tenants, ILKs, channels, aliases, history", """
CREATE TABLE identity_tenants (
    tenant_id    UUID PRIMARY KEY,
    name         VARCHAR(128) NOT NULL,
    domain       VARCHAR(128),
    status       VARCHAR(16) NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'active', 'suspended')),
    settings     JSONB NOT NULL DEFAULT '{}',
    is_default   BOOLEAN NOT NULL DEFAULT FALSE,
    approved_by  UUID,
    approved_at  TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX identity_tenants_domain ON identity_tenants (lower(domain)) WHERE domain IS NOT NULL;
CREATE UNIQUE INDEX identity_tenants_default ON identity_tenants (is_default) WHERE is_default;
CREATE INDEX identity_tenants_name ON identity_tenants (lower(name));

CREATE TABLE identity_ilks (
    ilk_id               UUID PRIMARY KEY,
    ilk_type             VARCHAR(16) NOT NULL CHECK (ilk_type IN ('human', 'agent', 'system')),
    registration_status  VARCHAR(16) NOT NULL DEFAULT 'temporary'
                         CHECK (registration_status IN ('temporary', 'partial', 'complete')),
    tenant_id            UUID NOT NULL REFERENCES identity_tenants (tenant_id),
    email                VARCHAR(256),
    node_name            VARCHAR(128),
    identification       JSONB NOT NULL DEFAULT '{}',
    roles                TEXT[] NOT NULL DEFAULT '{}',
    capabilities         TEXT[] NOT NULL DEFAULT '{}',
    registered_by        TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    registered_at        TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at           TIMESTAMPTZ
);
CREATE UNIQUE INDEX identity_ilks_email ON identity_ilks (email, tenant_id)
    WHERE email IS NOT NULL AND deleted_at IS NULL;
CREATE UNIQUE INDEX identity_ilks_node_name ON identity_ilks (node_name)
    WHERE node_name IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX identity_ilks_tenant ON identity_ilks (tenant_id);

-- A channel keeps the tenant it was first seen in, whatever ILK it belongs to later
-- (merges re-point channels, never re-key them).
CREATE TABLE identity_ichs (
    ich_id        UUID PRIMARY KEY,
    ilk_id        UUID NOT NULL REFERENCES identity_ilks (ilk_id),
    tenant_id     UUID NOT NULL REFERENCES identity_tenants (tenant_id),
    channel_type  VARCHAR(32) NOT NULL,
    address       VARCHAR(256) NOT NULL,
    is_primary    BOOLEAN NOT NULL DEFAULT FALSE,
    added_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (channel_type, address, tenant_id)
);
CREATE INDEX identity_ichs_ilk ON identity_ichs (ilk_id);

CREATE TABLE identity_ilk_aliases (
    old_ilk_id        UUID PRIMARY KEY,
    canonical_ilk_id  UUID NOT NULL REFERENCES identity_ilks (ilk_id),
    expires_at        TIMESTAMPTZ NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Append-only definition history (the original specified it and never wrote it).
CREATE TABLE identity_ilk_history (
    id             BIGSERIAL PRIMARY KEY,
    ilk_id         UUID NOT NULL,
    action         TEXT NOT NULL,
    changed_by     TEXT,
    change_reason  TEXT,
    snapshot       JSONB NOT NULL,
    at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX identity_ilk_history_ilk ON identity_ilk_history (ilk_id, id);

-- One monotonic version per committed write (for caches and, later, replica resync).
CREATE TABLE identity_version (
    id       INT PRIMARY KEY CHECK (id = 1),
    version  BIGINT NOT NULL
);
INSERT INTO identity_version VALUES (1, 0);
"""),
    (2, "modules, degrees, graduations", """
CREATE TABLE identity_modules (
    name         VARCHAR(128) NOT NULL,
    version      VARCHAR(64) NOT NULL,
    prompt_text  TEXT NOT NULL,
    sha256       CHAR(64) NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    category     VARCHAR(32) NOT NULL DEFAULT '',
    created_by   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE identity_degrees (
    name         VARCHAR(128) NOT NULL,
    version      VARCHAR(64) NOT NULL,
    modules      JSONB NOT NULL,
    digest       CHAR(64) NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    created_by   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE identity_graduations (
    ilk_id          UUID PRIMARY KEY REFERENCES identity_ilks (ilk_id),
    degree_name     VARCHAR(128) NOT NULL,
    degree_version  VARCHAR(64) NOT NULL,
    digest          CHAR(64) NOT NULL,
    signature       TEXT NOT NULL,
    key_id          VARCHAR(32) NOT NULL,
    graduated_by    TEXT,
    graduated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    FOREIGN KEY (degree_name, degree_version) REFERENCES identity_degrees (name, version)
);
"""),
    (3, "human subtype (internal/external), for routing policies", """
ALTER TABLE identity_ilks ADD COLUMN human_subtype VARCHAR(16)
    CHECK (human_subtype IN ('internal', 'external'));
ALTER TABLE identity_ilks ADD CONSTRAINT identity_ilks_subtype_human
    CHECK (human_subtype IS NULL OR ilk_type = 'human');
"""),
)


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply the missing migrations in order; return the versions applied now."""
    await conn.execute("""
        CREATE TABLE IF NOT EXISTS identity_schema_migrations (
            version INT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())""")
    applied: list[int] = []
    for version, name, sql in MIGRATIONS:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            done = await conn.fetchval("SELECT 1 FROM identity_schema_migrations WHERE version = $1", version)
            if done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO identity_schema_migrations (version, name) VALUES ($1, $2)",
                               version, name)
            applied.append(version)
    return applied
