-- Backfills (legato backfill …): one row per backfill, one per period. A period's run has a trigger key
-- made of its period (and params), not of the backfill, so the same period never runs twice.

CREATE TABLE backfill (
    id             text PRIMARY KEY,
    workflow_id    text             NOT NULL,
    version        integer          NOT NULL,
    range_from     timestamptz      NOT NULL,
    range_to       timestamptz      NOT NULL,
    step_seconds   double precision NOT NULL,
    params         jsonb            NOT NULL DEFAULT '{}',
    concurrency    integer          NOT NULL,
    status         text             NOT NULL,   -- running | paused | done | cancelled
    total          integer          NOT NULL,
    created_by     text,
    created_at     timestamptz      NOT NULL DEFAULT now(),
    updated_at     timestamptz      NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    cancelled_by   text,
    cancel_reason  text
);
CREATE INDEX backfill_workflow ON backfill (workflow_id, created_at DESC);
CREATE INDEX backfill_running ON backfill (status) WHERE status = 'running';

CREATE TABLE backfill_period (
    backfill_id   text        NOT NULL REFERENCES backfill (id) ON DELETE CASCADE,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    trigger_key   text        NOT NULL,
    instance_id   text        NOT NULL,
    params        jsonb       NOT NULL DEFAULT '{}',
    state         text        NOT NULL,   -- pending | submitted | retry | existing | cancelled
    submitted_at  timestamptz,
    PRIMARY KEY (backfill_id, period_start)
);
CREATE INDEX backfill_period_todo ON backfill_period (backfill_id, state, period_start);
CREATE INDEX backfill_period_key ON backfill_period (trigger_key);
