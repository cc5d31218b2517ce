-- Portal-wide settings shared by every portal node: the secrets the channels
-- derive pair keys and TURN credentials from, so any node can serve any device.
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
