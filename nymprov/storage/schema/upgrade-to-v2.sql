-- nymprov inbox store: schema version 1 to 2, in one transaction.
-- Leases move out of the message rows into their own table, so that leasing
-- a message no longer rewrites its row.  The old columns stay (SQLite would
-- rewrite the whole table to drop them) and are no longer read or written.

CREATE TABLE `leases`
(
 `message_id` INTEGER PRIMARY KEY,
 `lease_id` INTEGER NOT NULL,
 `expires` REAL NOT NULL
);
CREATE INDEX `leases_by_lease` ON `leases` (`lease_id`);
CREATE INDEX `leases_by_expiry` ON `leases` (`expires`);
-- A message's lease goes with it, however it is deleted: message ids are
-- reused, and a lease left behind would hold the next message of that id.
CREATE TRIGGER `messages_drop_lease` AFTER DELETE ON `messages`
BEGIN
 DELETE FROM `leases` WHERE `message_id` = old.`id`;
END;

INSERT INTO `leases` (`message_id`, `lease_id`, `expires`)
 SELECT `id`, `lease_id`, `lease_expires` FROM `messages` WHERE `lease_id` != 0;
UPDATE `messages` SET `lease_id` = 0, `lease_expires` = 0 WHERE `lease_id` != 0;
DROP INDEX `messages_leased`;

UPDATE `version` SET `version` = 2;
