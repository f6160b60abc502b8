-- Lifecycle events (docs/events.md) get an outbox of their own: one row per scheduler transaction,
-- holding that transaction's events in order, instead of one `outbox` row each. A one-step run makes
-- four events, and a row of `outbox` per event was four heap rows, four primary-key entries and four
-- deletes per run, and a relay that read them back past the work items with a regex on each subject.
-- The relay (`store/outbox.py`, EventOutboxRelay) publishes a row's events one message each, under
-- their own `Nats-Msg-Id`, and deletes the row.
CREATE TABLE event_outbox (
    id          bigserial   PRIMARY KEY,
    subjects    text[]      NOT NULL,
    payloads    bytea[]     NOT NULL,
    msg_ids     text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (cardinality(subjects) = cardinality(payloads) AND cardinality(subjects) = cardinality(msg_ids))
);
-- A busy batch's events run to tens of kilobytes: stored out of line without compression, as the
-- JSON is written once and read once.
ALTER TABLE event_outbox ALTER COLUMN payloads SET STORAGE EXTERNAL;

-- Events committed by the version before and not yet published move over, oldest first.
INSERT INTO event_outbox (subjects, payloads, msg_ids, created_at)
SELECT ARRAY[subject], ARRAY[payload], ARRAY[coalesce(msg_id, 'ob.migrated.' || id::text)], created_at
FROM outbox WHERE subject ~ '^([^.]+\.)?legato\.notify\.' ORDER BY id;
DELETE FROM outbox WHERE subject ~ '^([^.]+\.)?legato\.notify\.';
