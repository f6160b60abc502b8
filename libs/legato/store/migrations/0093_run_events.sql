-- Run lifecycle events (docs/events.md): the number of the last status change published for each run
-- and each step, so every change's event gets a unique, deterministic id (its Nats-Msg-Id).
ALTER TABLE workflow_instance ADD COLUMN notify_seq int NOT NULL DEFAULT 0;
ALTER TABLE step_run ADD COLUMN notify_seq int NOT NULL DEFAULT 0;
