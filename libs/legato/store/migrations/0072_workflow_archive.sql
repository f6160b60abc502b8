-- Archived workflows: inactive, hidden from `workflow list` unless asked for, runs kept.
-- Deleted workflows leave a tombstone with their last version number: a workflow pushed again under the
-- same id continues the numbering, so (workflow, version) never names two different definitions (every
-- service caches compiled versions by that pair). Who archived or deleted what is in operator_action.

ALTER TABLE workflow ADD COLUMN archived_at timestamptz;

CREATE TABLE deleted_workflow (
    id            text PRIMARY KEY,
    last_version  integer     NOT NULL,
    deleted_at    timestamptz NOT NULL DEFAULT now(),
    deleted_by    text
);
