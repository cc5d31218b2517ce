-- The internet resource's exclusions (SPEC 7.4): a JSON array of CIDR
-- prefixes the client keeps on the host's own path; NULL for none. Additive:
-- nodes of the previous release ignore it.

ALTER TABLE resources ADD COLUMN exclusions TEXT;
