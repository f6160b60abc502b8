-- Who paused a workflow's triggers, why and when (workflow.pause / workflow.resume); the flag itself is
-- workflow.paused, which the scheduler already honours (queued runs wait with reason "paused").
-- cron_fire.status gains 'skipped' (a fire recorded as a skipped run under the catch-up policy or a pause).

ALTER TABLE workflow ADD COLUMN paused_reason text;
ALTER TABLE workflow ADD COLUMN paused_by text;
ALTER TABLE workflow ADD COLUMN paused_at timestamptz;
