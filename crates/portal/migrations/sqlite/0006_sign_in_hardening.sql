-- Sign-in hardening (security review M6, L2). A pending code is also kept
-- sealed (AES-256-GCM under the portal's secret key, bound to the account
-- and address) so that asking again resends it instead of replacing it; and
-- wrong codes are counted per address and per (address, source network),
-- across codes, with exponential lockouts. Rows are keyed by a keyed hash
-- (the portal's secret key) of the address, never the address itself, so
-- the table does not collect addresses people mistyped.

ALTER TABLE email_codes ADD COLUMN sealed_code TEXT;

CREATE TABLE sign_in_failures (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    failures BIGINT NOT NULL,
    lock_ms BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    last_failure_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, subject)
);
CREATE INDEX sign_in_failures_age ON sign_in_failures(last_failure_at);

-- The admin claim means admin when it is JSON true or "true" (any case), or
-- equals (or, for a list, holds) this value (review L2: nothing else, so
-- "False", "no" or a non-empty list never make an admin).
ALTER TABLE identity_providers ADD COLUMN admin_claim_value TEXT;
