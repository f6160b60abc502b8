-- Starts the API accepted, written in the transaction that queues the StartRun in the outbox, so any
-- API process can answer `pending` for a run the scheduler has not applied yet (the outbox row is gone
-- once relayed, and another API replica never saw the request).

CREATE TABLE accepted_start (
    instance_id text PRIMARY KEY,
    workflow_id text NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accepted_start_accepted_at ON accepted_start (accepted_at);
