-- nymprov inbox store, schema version 2.
-- Run as one transaction by nymprov.storage.schema when the file is new.

-- Exactly one row: the schema version of this file.
CREATE TABLE `version`
(
 `version` INTEGER NOT NULL -- 2 for this schema; newer files are refused
);
INSERT INTO `version` (`version`) VALUES (2);

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
 `body` BLOB NOT NULL                   -- the message, never longer than the slot size
);
-- Pulls read one inbox oldest first.
CREATE INDEX `messages_by_inbox` ON `messages` (`address`, `id`);
-- Expiry deletes the oldest messages.
CREATE INDEX `messages_by_age` ON `messages` (`received`);

-- Messages handed out by a pull and not yet acked.  Apart from the messages,
-- so that leasing a message never rewrites its (2 KB) row.
CREATE TABLE `leases`
(
 `message_id` INTEGER PRIMARY KEY, -- the leased message's id in `messages`
 `lease_id` INTEGER NOT NULL,      -- the pull that holds it
 `expires` REAL NOT NULL           -- when the lease lapses and the message may be leased again
);
CREATE INDEX `leases_by_lease` ON `leases` (`lease_id`);
CREATE INDEX `leases_by_expiry` ON `leases` (`expires`);

-- Replay tags of the Sphinx key named by meta 'replay_key_id'.
CREATE TABLE `replay_tags`
(
 `tag` BLOB PRIMARY KEY -- the 16-byte replay tag of a processed packet
) WITHOUT ROWID;
