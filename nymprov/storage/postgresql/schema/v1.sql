-- nymprov inbox store on PostgreSQL, schema version 1.
-- Run in one transaction by nymprov.storage.postgresql.schema when the
-- database (or the schema named by its search_path) holds no nymprov tables.

-- Exactly one row: the schema version.
CREATE TABLE version
(
 version integer NOT NULL -- 1 for this schema; newer ones are refused
);
INSERT INTO version (version) VALUES (1);

-- Facts about the store itself, one row per key.
CREATE TABLE meta
(
 key text PRIMARY KEY, -- e.g. 'replay_key_id'
 value bytea NOT NULL  -- e.g. the id of the Sphinx key the replay tags belong to
);

-- Registered clients.  Tokens are never stored, only their hash.  The
-- usage columns are the inbox quota, shared by every provider process: they
-- change in the same transaction as the messages they count, under the
-- client row's lock.
CREATE TABLE clients
(
 address bytea PRIMARY KEY,               -- the client's 32-byte mixnet address
 token_hash bytea NOT NULL,               -- sha256 of the current access token
 registered double precision NOT NULL,    -- seconds since the epoch of the last (re)registration
 messages integer NOT NULL DEFAULT 0,     -- messages in the inbox
 bytes bigint NOT NULL DEFAULT 0          -- their bodies' bytes
);

-- Messages waiting to be pulled and acked, with the lease that holds them.
CREATE TABLE messages
(
 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- grows with arrival: order by id is oldest first
 address bytea NOT NULL,                             -- the client whose inbox holds it
 received double precision NOT NULL,                 -- seconds since the epoch of arrival; drives expiry
 size integer NOT NULL,                              -- length of body, for the quota
 lease_id bigint NOT NULL DEFAULT 0,                 -- the pull that holds it; 0 when never leased
 lease_expires double precision NOT NULL DEFAULT 0,  -- when that lease lapses; free once this is past
 body bytea NOT NULL                                 -- the message, never longer than the slot size
)
-- A 2 KB random body neither compresses nor needs a TOAST table of its own:
-- keep it in the row, one heap insert per message.
WITH (toast_tuple_target = 8160);
-- Pulls read one inbox oldest first; acks find a lease within one inbox.
CREATE INDEX messages_by_inbox ON messages (address, id);
-- Expiry deletes the oldest messages.
CREATE INDEX messages_by_age ON messages (received);
-- Acks find their lease's messages; only leased rows enter this index.
CREATE INDEX messages_by_lease ON messages (lease_id) WHERE lease_id <> 0;

-- Replay tags of the Sphinx key named by meta 'replay_key_id'.  The primary
-- key is the arbiter between provider processes: of two inserts of one tag,
-- exactly one succeeds.
CREATE TABLE replay_tags
(
 tag bytea PRIMARY KEY -- the 16-byte replay tag of a processed packet
);
