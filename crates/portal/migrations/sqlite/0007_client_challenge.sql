-- Client sign-in challenge (security review L3). A client now sends
-- client_challenge = base64url(SHA-256(nonce)) and keeps the nonce; a pending
-- OpenID Connect sign-in stores that challenge. Pending client sign-ins that
-- stored a nonce (at most 10 minutes old) are dropped rather than finished
-- the old way: their nonce went through the browser. Their users start again.

DELETE FROM oidc_sign_ins WHERE client_nonce IS NOT NULL;
ALTER TABLE oidc_sign_ins RENAME COLUMN client_nonce TO client_challenge;
