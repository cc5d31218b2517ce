-- Sign-in (SPEC F1-F8): identity providers, the identities that link a
-- provider's subject to an actor, pending email codes and OIDC sign-ins, and
-- which memberships a provider's groups claim manages.

CREATE TABLE identity_providers (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    -- AES-256-GCM sealed with the portal's secret key, never returned.
    client_secret TEXT NOT NULL,
    groups_claim TEXT,
    admin_claim TEXT,
    client_session_lifetime_secs BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (account_id, name)
);

CREATE TABLE identities (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    actor_id TEXT NOT NULL REFERENCES actors(id) ON DELETE CASCADE,
    provider_id TEXT NOT NULL REFERENCES identity_providers(id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    email TEXT,
    created_at BIGINT NOT NULL,
    last_signed_in_at BIGINT,
    UNIQUE (provider_id, subject)
);
CREATE INDEX identities_actor ON identities(actor_id);

-- One pending code per address; only its Argon2 hash is kept.
CREATE TABLE email_codes (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    email TEXT NOT NULL,
    actor_id TEXT NOT NULL REFERENCES actors(id) ON DELETE CASCADE,
    hash TEXT NOT NULL,
    attempts_left BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, email)
);

-- OIDC sign-ins between the redirect and the callback, keyed by a hash of
-- `state`; a row is taken (deleted) by the first callback, so a replayed
-- callback finds nothing. Shared by every portal node.
CREATE TABLE oidc_sign_ins (
    state_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    provider_id TEXT NOT NULL REFERENCES identity_providers(id) ON DELETE CASCADE,
    nonce TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    client_state TEXT,
    client_nonce TEXT,
    redirect_uri TEXT,
    expires_at BIGINT NOT NULL
);

-- Memberships a provider's groups claim made (NULL: made by an admin); a
-- sign-in replaces exactly that provider's ones.
ALTER TABLE memberships ADD COLUMN provider_id TEXT;
ALTER TABLE groups ADD COLUMN provider_id TEXT;
