-- Directory sync (SPEC 7.3, issue 18): directories (SCIM 2.0 pushed to the
-- portal, LDAP pulled by it) and what each one provisioned. Additive: nodes
-- of the previous release ignore the new table and columns (they show
-- directory-owned users and groups as ordinary ones and would let the API
-- change them: upgrade every node before adding a directory).

-- `settings` holds the LDAP connection as JSON (its bind password sealed
-- like identity providers' secrets); a SCIM directory's bearer token is kept
-- as a salted hash, found by its id.
CREATE TABLE directories (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    settings TEXT NOT NULL,
    token_id TEXT,
    token_salt TEXT,
    token_hash TEXT,
    last_sync_at BIGINT,
    last_sync TEXT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (account_id, name)
);
CREATE UNIQUE INDEX directories_token ON directories(token_id);

-- One row per user or group a directory provisioned: its id is the actor's
-- or group's, `document` what the directory says of it (SCIM attributes),
-- `name_key` its userName or displayName in lower case (unique per
-- directory), `version` its entity tag.
CREATE TABLE directory_entries (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    directory_id TEXT NOT NULL REFERENCES directories(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    name_key TEXT NOT NULL,
    external_id TEXT,
    document TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX directory_entries_name ON directory_entries(directory_id, kind, name_key);
CREATE INDEX directory_entries_external ON directory_entries(directory_id, kind, external_id);

-- Which directory owns a user or group (NULL: the admins do), and which
-- directory made an audited change.
ALTER TABLE actors ADD COLUMN directory_id TEXT;
ALTER TABLE groups ADD COLUMN directory_id TEXT;
ALTER TABLE audit_log ADD COLUMN directory_id TEXT;
