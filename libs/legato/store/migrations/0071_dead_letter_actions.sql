-- Operator actions on dead letters: replayed once (the replay is published through the outbox with a
-- Nats-Msg-Id derived from the dead letter id, in the transaction that sets replayed_at) or discarded.

ALTER TABLE dead_letter
    ADD COLUMN replayed_at  timestamptz,
    ADD COLUMN replayed_by  text,
    ADD COLUMN discarded_at timestamptz,
    ADD COLUMN discarded_by text;
CREATE INDEX dead_letter_open ON dead_letter (id DESC) WHERE discarded_at IS NULL;
