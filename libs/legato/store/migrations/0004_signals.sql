-- Step signal dependencies: a row per (run, step, wait_for_signals entry), written by the scheduler
-- in the transaction that makes the step wait, satisfied (once) by the signal router.

CREATE TABLE signal_wait (
    id            text PRIMARY KEY,         -- <instance>:<step>:<index>
    workflow_id   text        NOT NULL,
    instance_id   text        NOT NULL,
    step_id       text        NOT NULL,
    name          text        NOT NULL,     -- the signal name waited for
    match         jsonb       NOT NULL,     -- {field: {op, value}} with values evaluated for the run
    created_at    timestamptz NOT NULL DEFAULT now(),
    satisfied_by  text,                     -- the signal's id
    satisfied_at  timestamptz,
    cancelled     boolean     NOT NULL DEFAULT false
);
CREATE INDEX signal_wait_open ON signal_wait (name) WHERE satisfied_at IS NULL AND NOT cancelled;
CREATE INDEX signal_wait_instance ON signal_wait (instance_id);
