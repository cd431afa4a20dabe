-- imgproxy metadata. Applied at every start (idempotent); user_version tracks migrations.

CREATE TABLE IF NOT EXISTS images (
    id          TEXT PRIMARY KEY,
    status      TEXT NOT NULL,            -- queued|downloading|processing|tiling|storing|ready|error
    error       TEXT,                     -- originalNotFound|invalidImage|uploadError|statusUpdateError|unknown
    detail      TEXT,                     -- a human-readable reason for `error`
    version     INTEGER NOT NULL DEFAULT 1, -- the version viewers are served
    building    INTEGER,                  -- the version a running pull builds, NULL when none
    origin      TEXT,                     -- name of the origin that had the ID
    created_by  TEXT NOT NULL DEFAULT 'view', -- 'view' rows vanish when no origin has the ID
    batch       TEXT,                     -- the `imgproxy warm` run that queued it last
    org_id      TEXT,                     -- owner, for images created through an API
    folder_id   TEXT,
    name        TEXT,
    source_url  TEXT,                     -- for images added by URL rather than by origin
    cache_bytes INTEGER NOT NULL DEFAULT 0, -- bytes its cache directory held when last measured
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    viewed_at   REAL
);

CREATE TABLE IF NOT EXISTS versions (
    image_id    TEXT NOT NULL,
    version     INTEGER NOT NULL,
    width       INTEGER,
    height      INTEGER,
    has_alpha   INTEGER NOT NULL DEFAULT 0,
    placeholder INTEGER NOT NULL DEFAULT 0,
    display     INTEGER NOT NULL DEFAULT 0,
    zoom        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (image_id, version)
);

-- One pending job per image: the queue itself is single-flight.
CREATE TABLE IF NOT EXISTS jobs (
    image_id    TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    priority    INTEGER NOT NULL,         -- 0 viewer waiting, 1 hook, 2 bulk
    state       TEXT NOT NULL DEFAULT 'queued', -- queued|running
    owner       INTEGER,                  -- pid of the process running it
    attempts    INTEGER NOT NULL DEFAULT 0,
    seq         INTEGER NOT NULL,
    rerun       INTEGER NOT NULL DEFAULT 0 -- an update arrived while it ran: pull again after
);

CREATE INDEX IF NOT EXISTS jobs_pick ON jobs (state, priority, seq);
CREATE INDEX IF NOT EXISTS images_batch ON images (batch) WHERE batch IS NOT NULL;

CREATE TABLE IF NOT EXISTS orgs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL,            -- sha256 of the key's secret part; the key is never stored
    root_folder TEXT NOT NULL,
    created_at  REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS folders (
    id          TEXT PRIMARY KEY,         -- 6 characters
    org_id      TEXT NOT NULL,
    parent_id   TEXT,
    name        TEXT NOT NULL,
    type        TEXT NOT NULL,            -- folder|album|space
    created_at  REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS images_folder ON images (folder_id) WHERE folder_id IS NOT NULL;

-- Store image API (SPEC §6): products and collections of an organisation, and their images.
CREATE TABLE IF NOT EXISTS owners (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id      TEXT NOT NULL,
    kind        TEXT NOT NULL,            -- products|standard_collections|super_collections
    handle      TEXT NOT NULL,
    title       TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    UNIQUE (org_id, kind, handle)
);

CREATE TABLE IF NOT EXISTS store_images (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id      INTEGER NOT NULL,
    position      INTEGER NOT NULL,
    alt           TEXT NOT NULL DEFAULT '',
    filename      TEXT NOT NULL,
    extension     TEXT NOT NULL,
    digest        TEXT NOT NULL,
    proxy_id      TEXT NOT NULL,          -- the image ID the proxy serves it under
    variation_ids TEXT NOT NULL DEFAULT '[]',
    created_at    REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS store_images_owner ON store_images (owner_id, position);
