-- Step-level scheduling: signals a step received, and named concurrency tags shared across workflows.

ALTER TABLE step_run ADD COLUMN signals jsonb;
ALTER TABLE step_run ADD COLUMN waiting_since timestamptz;

-- A named limit on how many leaf steps carrying the tag run at once, across all workflows.
CREATE TABLE concurrency_tag (
    tag          text PRIMARY KEY,
    max_running  integer     NOT NULL CHECK (max_running >= 0),
    updated_by   text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Who holds a permit of a tag (one row per running attempt and tag).
CREATE TABLE tag_permit (
    tag          text        NOT NULL,
    attempt_id   text        NOT NULL,
    workflow_id  text        NOT NULL,
    instance_id  text        NOT NULL,
    step_id      text        NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tag, attempt_id)
);

-- Steps waiting for a permit, oldest first: a freed permit goes to the oldest waiter, whichever
-- workflow it belongs to.
CREATE TABLE tag_waiter (
    tag          text        NOT NULL,
    workflow_id  text        NOT NULL,
    instance_id  text        NOT NULL,
    step_id      text        NOT NULL,
    since        timestamptz NOT NULL,
    PRIMARY KEY (tag, instance_id, step_id)
);
CREATE INDEX tag_waiter_order ON tag_waiter (tag, since);
