-- The account's DNS search domain, handed to its clients in `init` (F25).
ALTER TABLE accounts ADD COLUMN search_domain TEXT;
