-- Scoped API tokens (SPEC 7.6): 'read' for a token that may only read, NULL
-- for one that may also write (every API token before this release).
-- Additive: nodes of the previous release ignore it (and let its tokens
-- write, as they did: upgrade every node before handing out read tokens).

ALTER TABLE tokens ADD COLUMN scopes TEXT;
