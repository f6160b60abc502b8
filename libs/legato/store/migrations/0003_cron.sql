-- Cron time triggers: one row per fire, keyed by (workflow, trigger, fire time), so a restart never
-- fires twice; a cursor per trigger so a restart never skips silently.

CREATE TABLE cron_cursor (
    workflow_id  text        NOT NULL,
    trigger_id   text        NOT NULL,
    last_fire    timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, trigger_id)
);

CREATE TABLE cron_fire (
    workflow_id  text        NOT NULL,
    trigger_id   text        NOT NULL,
    fire_time    timestamptz NOT NULL,
    instance_id  text,
    status       text        NOT NULL,   -- fired | missed (beyond the catch-up bound)
    fired_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, trigger_id, fire_time)
);
