-- A backfill's queue priority (legato backfill start --priority): its runs carry it in their trigger
-- info, and a workflow's queued runs start by (priority, arrival). low (the default) waits behind
-- every live run, so a long backfill never starves the live schedule.

ALTER TABLE backfill ADD COLUMN priority text NOT NULL DEFAULT 'low'
    CHECK (priority IN ('low', 'normal', 'high'));
