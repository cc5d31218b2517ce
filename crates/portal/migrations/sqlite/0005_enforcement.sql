-- Enforcement (issue 15): the authorizations the portal holds, so a
-- restarted node or another node of a cluster knows them, decides them again
-- and revokes what no longer holds; and the token a device registered with,
-- for the cap on devices per token.

-- One row per authorization a gateway was told to enforce: (client device,
-- resource, gateway). The pair's secrets are not stored: they derive from
-- the portal's pair secret and both public keys. The facts the decision
-- used are kept to decide again. No foreign keys to devices, tokens or
-- resources: a row whose device, token or resource is gone must still be
-- seen (and revoked at its gateway), not vanish in a cascade.
CREATE TABLE grants (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    client_key TEXT NOT NULL,
    client_ipv4 TEXT NOT NULL,
    client_ipv6 TEXT NOT NULL,
    gateway_key TEXT NOT NULL,
    gateway_ipv4 TEXT NOT NULL,
    gateway_ipv6 TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    token_id TEXT NOT NULL,
    token_expires_at BIGINT,
    identity_provider_id TEXT,
    remote_ip TEXT NOT NULL,
    country TEXT,
    os TEXT,
    verified BIGINT NOT NULL,
    expires_at BIGINT,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, resource_id, gateway_id)
);
CREATE INDEX grants_account ON grants(account_id);

ALTER TABLE devices ADD COLUMN token_id TEXT;
CREATE INDEX devices_token ON devices(token_id);
