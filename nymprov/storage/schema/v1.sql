-- nymprov inbox store, schema version 1.
-- Run as one transaction by nymprov.storage.schema when the file is new.

-- Exactly one row: the schema version of this file.
CREATE TABLE `version`
(
 `version` INTEGER NOT NULL -- 1 for this schema; newer files are refused
);
INSERT INTO `version` (`version`) VALUES (1);

-- Facts about the store itself, one row per key.
CREATE TABLE `meta`
(
 `key` TEXT PRIMARY KEY, -- e.g. 'replay_key_id'
 `value` BLOB NOT NULL   -- e.g. the id of the Sphinx key the replay tags belong to
);

-- Registered clients.  Tokens are never stored, only their hash.
CREATE TABLE `clients`
(
 `address` BLOB PRIMARY KEY,   -- the client's 32-byte mixnet address
 `token_hash` BLOB NOT NULL,   -- sha256 of the current access token
 `registered` REAL NOT NULL    -- seconds since the epoch of the last (re)registration
);

-- Messages waiting to be pulled and acked.
CREATE TABLE `messages`
(
 `id` INTEGER PRIMARY KEY,              -- message id; grows with arrival, so order by id is oldest first
 `address` BLOB NOT NULL,               -- the client whose inbox holds it
 `received` REAL NOT NULL,              -- seconds since the epoch of arrival; drives expiry
 `lease_id` INTEGER NOT NULL DEFAULT 0, -- the pull that holds it; 0 when not leased
 `lease_expires` REAL NOT NULL DEFAULT 0, -- when that lease lapses and the message may be leased again
 `body` BLOB NOT NULL                   -- the message, never longer than the slot size
);
-- Pulls read one inbox oldest first.
CREATE INDEX `messages_by_inbox` ON `messages` (`address`, `id`);
-- Expiry deletes the oldest messages.
CREATE INDEX `messages_by_age` ON `messages` (`received`);
-- Only leased rows enter this index, so appends never touch it.
CREATE INDEX `messages_leased` ON `messages` (`lease_expires`) WHERE `lease_id` != 0;

-- Replay tags of the Sphinx key named by meta 'replay_key_id'.
CREATE TABLE `replay_tags`
(
 `tag` BLOB PRIMARY KEY -- the 16-byte replay tag of a processed packet
) WITHOUT ROWID;
