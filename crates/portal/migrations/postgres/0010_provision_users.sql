-- OpenID Connect providers that create users at first sign-in (SPEC 7.3):
-- an unknown identity with a verified email becomes a user. Additive: nodes
-- of the previous release ignore it (and refuse unknown identities, as before).

ALTER TABLE identity_providers ADD COLUMN provision_users BIGINT NOT NULL DEFAULT 0;
